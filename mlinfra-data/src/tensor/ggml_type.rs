//! GGML tensor element types, with the block layout that sizes their data.

use std::fmt;

/// Defines [`GgmlType`] from one table, so the id, name, block size and type size of a type
/// are written once, as in ggml's `type_traits` table.
macro_rules! ggml_types {
    ($($(#[$doc:meta])* $variant:ident = $id:literal, $block:literal, $size:literal;)*) => {
        /// The element type of a GGUF tensor, as numbered in ggml (`enum ggml_type`).
        ///
        /// Quantized types store elements in blocks: [`block_size`](Self::block_size) elements
        /// take [`type_size`](Self::type_size) bytes, and a tensor's first dimension must be a
        /// multiple of the block size. Plain types are blocks of one element. The table follows
        /// ggml's `type_traits` (and gguf-py's `GGML_QUANT_SIZES`); ids ggml has retired
        /// (4, 5, 31–33, 36–38) are unknown here and refused when a file uses them.
        ///
        /// Every type can be read as raw bytes ([`GgufTensor::bytes`]); which ones
        /// [`GgufTensor::dequantize_f32`] converts is listed there.
        ///
        /// [`GgufTensor::bytes`]: crate::tensor::GgufTensor::bytes
        /// [`GgufTensor::dequantize_f32`]: crate::tensor::GgufTensor::dequantize_f32
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[allow(non_camel_case_types)] // ggml's own names, so they can be searched for
        pub enum GgmlType {
            $($(#[$doc])* $variant = $id,)*
        }

        impl GgmlType {
            /// The type with ggml id `id`, or `None` for an id this reader does not know.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// Elements per block: 1 for plain types, 32 to 256 for quantized ones.
            pub fn block_size(self) -> usize {
                match self {
                    $(GgmlType::$variant => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $(GgmlType::$variant => $size,)*
                }
            }

            /// ggml's name for the type, such as `Q4_K`.
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit IEEE float.
    F32 = 0, 1, 4;
    /// 16-bit IEEE float.
    F16 = 1, 1, 2;
    /// 4-bit, one f16 scale per 32 elements.
    Q4_0 = 2, 32, 18;
    /// 4-bit, f16 scale and minimum per 32 elements.
    Q4_1 = 3, 32, 20;
    /// 5-bit, one f16 scale per 32 elements.
    Q5_0 = 6, 32, 22;
    /// 5-bit, f16 scale and minimum per 32 elements.
    Q5_1 = 7, 32, 24;
    /// 8-bit, one f16 scale per 32 elements.
    Q8_0 = 8, 32, 34;
    /// 8-bit, f32 scale and sum per 32 elements (an intermediate format of ggml's matmul).
    Q8_1 = 9, 32, 40;
    /// 2-bit k-quant, 256-element super-blocks.
    Q2_K = 10, 256, 84;
    /// 3-bit k-quant.
    Q3_K = 11, 256, 110;
    /// 4-bit k-quant: eight 32-element sub-blocks with 6-bit scales and minimums.
    Q4_K = 12, 256, 144;
    /// 5-bit k-quant.
    Q5_K = 13, 256, 176;
    /// 6-bit k-quant: sixteen 16-element sub-blocks with 8-bit scales.
    Q6_K = 14, 256, 210;
    /// 8-bit k-quant (an intermediate format of ggml's matmul).
    Q8_K = 15, 256, 292;
    /// 2.06-bit importance quant.
    IQ2_XXS = 16, 256, 66;
    /// 2.31-bit importance quant.
    IQ2_XS = 17, 256, 74;
    /// 3.06-bit importance quant.
    IQ3_XXS = 18, 256, 98;
    /// 1.56-bit importance quant.
    IQ1_S = 19, 256, 50;
    /// 4-bit non-linear quant, 32-element blocks.
    IQ4_NL = 20, 32, 18;
    /// 3.44-bit importance quant.
    IQ3_S = 21, 256, 110;
    /// 2.5-bit importance quant.
    IQ2_S = 22, 256, 82;
    /// 4.25-bit non-linear quant, 256-element super-blocks.
    IQ4_XS = 23, 256, 136;
    /// 8-bit signed integer.
    I8 = 24, 1, 1;
    /// 16-bit signed integer.
    I16 = 25, 1, 2;
    /// 32-bit signed integer.
    I32 = 26, 1, 4;
    /// 64-bit signed integer.
    I64 = 27, 1, 8;
    /// 64-bit IEEE float.
    F64 = 28, 1, 8;
    /// 1.75-bit importance quant.
    IQ1_M = 29, 256, 56;
    /// bfloat16.
    BF16 = 30, 1, 2;
    /// Ternary quant, 1.69 bits.
    TQ1_0 = 34, 256, 54;
    /// Ternary quant, 2.06 bits.
    TQ2_0 = 35, 256, 66;
    /// OCP microscaling FP4: E8M0 scale per 32 elements.
    MXFP4 = 39, 32, 17;
    /// NVIDIA FP4: four FP8 scales per 64 elements.
    NVFP4 = 40, 64, 36;
    /// 1-bit quant, 128-element blocks.
    Q1_0 = 41, 128, 18;
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_retired_ids_are_unknown() {
        for id in 0..64 {
            if let Some(ty) = GgmlType::from_id(id) {
                assert_eq!(ty as u32, id);
            }
        }
        for retired in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(retired), None, "id {retired}");
        }
    }

    #[test]
    fn block_layouts_match_ggml() {
        // The sizes follow from ggml's block structs (QK_K = 256).
        assert_eq!(GgmlType::Q4_K.type_size(), 2 + 2 + 12 + 256 / 2);
        assert_eq!(GgmlType::Q6_K.type_size(), 256 / 2 + 256 / 4 + 256 / 16 + 2);
        assert_eq!(GgmlType::Q8_0.type_size(), 2 + 32);
        assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
    }
}
