//! Forward passes over packed rows: several sequences per row, each attending only to itself,
//! with positions restarting per sequence (mlinfra-loader's [`Pack`] collate makes them).
//!
//! [`Pack`]: mlinfra_loader::Pack

use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::Llama;
use crate::{Error, Result};

/// Rows of packed token sequences, on the host: `rows × seq_len` cells each, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRows {
    /// Rows.
    pub rows: usize,
    /// Cells per row.
    pub seq_len: usize,
    /// Token ids (padding's id is any valid id).
    pub tokens: Vec<u32>,
    /// Each token's position in its own sequence.
    pub positions: Vec<usize>,
    /// Which sequence of its row each token belongs to (1, 2, ...; 0 for padding). Tokens
    /// attend only to earlier tokens of the same segment.
    pub segments: Vec<u32>,
}

impl PackedRows {
    /// The number of cells, `rows · seq_len`.
    pub fn cells(&self) -> usize {
        self.rows * self.seq_len
    }

    /// Whether the token in cell `cell + 1` continues the sequence of cell `cell` (so that the
    /// logits at `cell` predict it): same row, same non-padding segment.
    pub fn continues(&self, cell: usize) -> bool {
        !(cell + 1).is_multiple_of(self.seq_len)
            && cell + 1 < self.cells()
            && self.segments[cell] != 0
            && self.segments[cell] == self.segments[cell + 1]
    }
}

impl Llama {
    /// Logits (fp32) `[cells.len(), vocab]` at the cells `cells` (flat indices into the rows)
    /// of packed rows: every layer runs over all cells, with attention block-diagonal per
    /// segment and causal, and rotary positions from `rows.positions`; only the selected
    /// cells go through the output projection (a loss needs the logits where it scores a
    /// token, not the vocabulary-sized product at every cell).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for buffers whose lengths are not `rows · seq_len`, no cells,
    /// a position past `max_seq_len`, a token outside the vocabulary, or a selected cell
    /// outside the rows.
    pub fn packed_logits(&self, rows: &PackedRows, cells: &[usize]) -> Result<Tensor<2>> {
        let weight = self.embed_tokens.weight.val();
        let [vocab, hidden] = weight.dims();
        let refuse = |reason: String| {
            Err(Error::InvalidInput {
                operation: "Llama::packed_logits",
                reason: reason.into(),
            })
        };
        let n = rows.cells();
        if n == 0 || [rows.tokens.len(), rows.positions.len(), rows.segments.len()] != [n, n, n] {
            return refuse(format!(
                "{} rows of {} need as many tokens, positions and segments, got {}, {} and {}",
                rows.rows,
                rows.seq_len,
                rows.tokens.len(),
                rows.positions.len(),
                rows.segments.len()
            ));
        }
        if let Some(p) = rows.positions.iter().find(|&&p| p >= self.max_seq_len) {
            return refuse(format!(
                "position {p} is past the model's {} positions",
                self.max_seq_len
            ));
        }
        if let Some(t) = rows.tokens.iter().find(|&&t| t as usize >= vocab) {
            return refuse(format!("token {t} is outside the {vocab}-token vocabulary"));
        }
        if let Some(c) = cells.iter().find(|&&c| c >= n) {
            return refuse(format!("cell {c} is outside the {n} cells"));
        }
        let device = weight.device();
        let ids: Vec<i64> = rows.tokens.iter().map(|&t| i64::from(t)).collect();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [rows.rows, rows.seq_len]), &device);
        let rope = self.rope(rows.positions.iter().copied());
        let mask = Tensor::<4, Bool>::from_data(
            TensorData::new(
                block_causal_mask(rows),
                [rows.rows, 1, rows.seq_len, rows.seq_len],
            ),
            &device,
        );
        let x = self
            .hidden_states(tokens, &rope, Some(&mask), None)
            .reshape([n, hidden]);
        let selected: Vec<i64> = cells.iter().map(|&c| c as i64).collect();
        let count = selected.len();
        let selected = Tensor::<1, Int>::from_data(TensorData::new(selected, [count]), &device);
        let x = x.select(0, selected).reshape([1, count, hidden]);
        Ok(self.logits(x).reshape([count, vocab]))
    }
}

/// `[rows, seq, seq]` flags, true where query `i` must not see key `j`: unless `j ≤ i` in the
/// same segment. Padding (segment 0) attends to earlier padding, so that no query has every
/// key masked (a softmax over nothing is NaN); nothing real attends to padding.
fn block_causal_mask(rows: &PackedRows) -> Vec<bool> {
    let seq = rows.seq_len;
    let mut mask = vec![true; rows.rows * seq * seq];
    for row in 0..rows.rows {
        let segments = &rows.segments[row * seq..(row + 1) * seq];
        for (i, &si) in segments.iter().enumerate() {
            let flags = &mut mask[(row * seq + i) * seq..(row * seq + i + 1) * seq];
            for (j, &sj) in segments[..=i].iter().enumerate() {
                flags[j] = si != sj;
            }
        }
    }
    mask
}
