//! A tiny GGUF writer for hand-built test files: enough structure to make valid files, and
//! raw enough to make every kind of invalid one.

/// GGUF value type ids.
pub const U8: u32 = 0;
pub const I8: u32 = 1;
pub const U16: u32 = 2;
pub const I16: u32 = 3;
pub const U32: u32 = 4;
pub const I32: u32 = 5;
pub const F32: u32 = 6;
pub const BOOL: u32 = 7;
pub const STRING: u32 = 8;
pub const ARRAY: u32 = 9;
pub const U64: u32 = 10;
pub const I64: u32 = 11;
pub const F64: u32 = 12;

/// ggml type ids.
pub const GGML_F32: u32 = 0;
pub const GGML_Q4_0: u32 = 2;
pub const GGML_Q8_0: u32 = 8;

/// A GGUF string: u64 length, then the bytes (not checked to be UTF-8).
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// An array value (without its leading ARRAY type tag): element type, length, elements.
pub fn array(element_type: u32, len: u64, elements: &[u8]) -> Vec<u8> {
    let mut out = element_type.to_le_bytes().to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(elements);
    out
}

/// A GGUF file under construction. Fields are public so tests can corrupt them.
pub struct Gguf {
    pub version: u32,
    pub n_kv: u64,
    pub kv: Vec<u8>,
    pub n_tensors: u64,
    pub infos: Vec<u8>,
    pub data: Vec<u8>,
    pub alignment: usize,
}

impl Gguf {
    pub fn new(version: u32) -> Self {
        Gguf {
            version,
            n_kv: 0,
            kv: Vec::new(),
            n_tensors: 0,
            infos: Vec::new(),
            data: Vec::new(),
            alignment: 32,
        }
    }

    /// Offset of the first metadata entry: magic, version and the two counts.
    pub const KV_START: usize = 4 + 4 + 8 + 8;

    /// Appends a metadata entry with a raw, already-encoded value.
    pub fn kv_raw(&mut self, key: &[u8], value_type: u32, value: &[u8]) -> &mut Self {
        self.n_kv += 1;
        self.kv.extend(string(key));
        self.kv.extend_from_slice(&value_type.to_le_bytes());
        self.kv.extend_from_slice(value);
        self
    }

    pub fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.kv_raw(key.as_bytes(), U32, &value.to_le_bytes())
    }

    pub fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.kv_raw(key.as_bytes(), STRING, &string(value.as_bytes()))
    }

    /// Appends a tensor info with an explicit offset, and no data.
    pub fn info(&mut self, name: &[u8], dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.n_tensors += 1;
        self.infos.extend(string(name));
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&ggml_type.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self
    }

    /// Appends a tensor and its data, at the next aligned offset of the data section.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: &[u8]) -> &mut Self {
        let offset = self.data.len().next_multiple_of(self.alignment);
        self.data.resize(offset, 0);
        self.data.extend_from_slice(data);
        self.info(name.as_bytes(), dims, ggml_type, offset as u64)
    }

    /// Offset where the tensor infos start.
    pub fn infos_start(&self) -> usize {
        Self::KV_START + self.kv.len()
    }

    /// Offset where the data section starts.
    pub fn data_start(&self) -> usize {
        (self.infos_start() + self.infos.len()).next_multiple_of(self.alignment)
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        out.extend_from_slice(&self.infos);
        if !self.data.is_empty() {
            out.resize(self.data_start(), 0);
            out.extend_from_slice(&self.data);
        }
        out
    }
}
