//! Forward passes over packed rows: several sequences per row, each attending only to itself,
//! with positions restarting per sequence (mlinfra-loader's [`Pack`] collate makes them).
//!
//! [`Pack`]: mlinfra_loader::Pack

use burn::tensor::Tensor;

use super::{Llama, VarlenAttention};
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

impl PackedRows {
    /// The real (non-padding) cells laid end to end, as [`Llama::forward_tokens`] takes them:
    /// their tokens and positions, where each sequence starts (a sequence is a run of one
    /// non-zero segment within a row), and for every cell its index in that flat batch
    /// (`None` for padding).
    fn unpadded(&self) -> (Vec<u32>, Vec<usize>, Vec<usize>, Vec<Option<usize>>) {
        let mut tokens = Vec::with_capacity(self.cells());
        let mut positions = Vec::with_capacity(self.cells());
        let mut starts = vec![0];
        let flat = (0..self.cells())
            .map(|cell| {
                if self.segments[cell] == 0 {
                    return None;
                }
                let new_sequence = cell.is_multiple_of(self.seq_len)
                    || self.segments[cell - 1] != self.segments[cell];
                if new_sequence && !tokens.is_empty() {
                    starts.push(tokens.len());
                }
                tokens.push(self.tokens[cell]);
                positions.push(self.positions[cell]);
                Some(tokens.len() - 1)
            })
            .collect();
        starts.push(tokens.len());
        (tokens, positions, starts, flat)
    }
}

impl Llama {
    /// Logits (fp32) `[cells.len(), vocab]` at the cells `cells` (flat indices into the rows)
    /// of packed rows. Padding is dropped before the first layer: the real cells run as one
    /// flat batch of sequences ([`VarlenAttention`]: each token attends causally within its
    /// own sequence), with rotary positions from `rows.positions`, and only the selected cells
    /// go through the output projection (a loss needs the logits where it scores a token, not
    /// the vocabulary-sized product at every cell). The cost is that of the real tokens alone,
    /// whatever the packing efficiency.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for buffers whose lengths are not `rows · seq_len`, no cells, no
    /// real (non-padding) cell, a position past `max_seq_len`, a token outside the vocabulary,
    /// or a selected cell outside the rows or on padding.
    pub fn packed_logits(&self, rows: &PackedRows, cells: &[usize]) -> Result<Tensor<2>> {
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
        if let Some(c) = cells.iter().find(|&&c| c >= n) {
            return refuse(format!("cell {c} is outside the {n} cells"));
        }
        let (tokens, positions, starts, flat) = rows.unpadded();
        if tokens.is_empty() {
            return refuse(format!("all {n} cells are padding (segment 0)"));
        }
        let selected = cells
            .iter()
            .map(|&c| flat[c].ok_or(c))
            .collect::<std::result::Result<Vec<usize>, usize>>();
        let selected = match selected {
            Ok(selected) => selected,
            Err(c) => return refuse(format!("cell {c} is padding (segment 0)")),
        };
        let mut attention = VarlenAttention::new(starts)?;
        self.forward_tokens(&tokens, &positions, &selected, &mut attention)
    }
}
