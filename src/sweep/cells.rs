//! Grid expansion: validated [`Block`]s → [`Cell`]s, each with a stable [`CellId`].
//!
//! A cell is one adaptation plus its fine-tuning settings after overrides; folds, seeds and
//! views are replicate axes that hang under it (the planner makes jobs of them). Order is
//! deterministic: blocks in spec order, then kinds, then each axis in the order written, the
//! last axis fastest. The id is the SHA-256 of the cell's canonical JSON, so the same cell gets
//! the same id in any spec, and changing a setting changes exactly the ids of the cells it
//! reaches.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::spec::{Block, Partial, TrainSettings};
use super::values::Alpha;
use crate::model::{AdaptationKind, AdaptationSpec, Selector};

/// Bumped when the meaning of a cell's JSON changes, so that old ids stop matching.
const CELL_ID_VERSION: &str = "ranksweep-cell-v1";

/// A cell's id: the first 16 hex digits of SHA-256 over its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CellId(String);

impl CellId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an id read back from storage.
    pub fn from_hex(s: &str) -> Option<CellId> {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| CellId(s.to_string()))
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One configuration of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: CellId,
    /// The grid block that produced it (not part of the id).
    pub block: usize,
    /// Kind, selector, rank, alpha (always set for adapters) and train_norms.
    pub adaptation: AdaptationSpec,
    pub finetune: TrainSettings,
}

/// Field order: the settings shared by a block first, so their hash state is computed once.
#[derive(Serialize)]
struct Canonical<'a> {
    finetune: &'a TrainSettings,
    adaptation: &'a AdaptationSpec,
}

/// The SHA-256 state after the version line and the fine-tuning half of the canonical JSON,
/// shared by every cell of a block (expansion hashes only each cell's adaptation).
#[derive(Clone)]
struct IdPrefix(Sha256);

impl IdPrefix {
    fn new(finetune: &TrainSettings) -> IdPrefix {
        let mut h = Sha256::new();
        h.update(CELL_ID_VERSION.as_bytes());
        h.update(b"\n{\"finetune\":");
        h.update(to_json(finetune).as_bytes());
        h.update(b",\"adaptation\":");
        IdPrefix(h)
    }

    /// The first 8 bytes of the digest.
    fn digest(&self, adaptation: &AdaptationSpec) -> [u8; 8] {
        let mut h = self.0.clone();
        h.update(to_json(adaptation).as_bytes());
        h.update(b"}");
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }
}

fn to_json<T: Serialize>(x: &T) -> String {
    serde_json::to_string(x).expect("cells serialize: plain structs of numbers and strings")
}

fn hex(bytes: [u8; 8]) -> CellId {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(16);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    CellId(s)
}

impl Cell {
    pub fn new(block: usize, adaptation: AdaptationSpec, finetune: TrainSettings) -> Cell {
        let id = hex(IdPrefix::new(&finetune).digest(&adaptation));
        Cell {
            id,
            block,
            adaptation,
            finetune,
        }
    }

    /// The JSON the id hashes (after a version line): fixed field order, absent fields omitted,
    /// floats as serde_json prints them (shortest round-trip form, so `1e-3` and `0.001`
    /// agree).
    pub fn canonical_json(&self) -> String {
        to_json(&Canonical {
            finetune: &self.finetune,
            adaptation: &self.adaptation,
        })
    }

    /// A short label: `conv-lora/decoder/r16`, plus `/a8` when alpha ≠ rank and `+norms`.
    pub fn label(&self) -> String {
        let a = &self.adaptation;
        let mut s = a.label();
        if let (Some(r), Some(al)) = (a.rank, a.alpha)
            && al != r as f64
        {
            s.push_str(&format!("/a{al}"));
        }
        if a.train_norms {
            s.push_str("+norms");
        }
        s
    }
}

/// Why a grid cannot be expanded; the spec layer turns these into located errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpandError {
    #[error("grid[{block}]: duplicate cell `{label}` (first produced by grid[{first_block}])")]
    Duplicate {
        block: usize,
        first_block: usize,
        label: String,
    },
    #[error("grid[{block}].exclude[{index}]: matches no cell of this block")]
    UnusedExclude { block: usize, index: usize },
    #[error("grid[{block}].exclude: excludes every cell of this block")]
    AllExcluded { block: usize },
    #[error("grid[{block}]: {message}")]
    Invalid { block: usize, message: String },
}

/// Expands validated blocks into cells (see the module docs for the order).
pub fn expand(grid: &[Block]) -> Result<Vec<Cell>, ExpandError> {
    let mut cells = Vec::new();
    // Keyed by the id's 8 bytes, so that no string is built to look one up.
    let mut seen: HashMap<[u8; 8], usize> = HashMap::new();
    for (bi, b) in grid.iter().enumerate() {
        let start = cells.len();
        let prefix = IdPrefix::new(&b.finetune);
        let mut used = vec![false; b.exclude.len()];
        for &kind in &b.kinds {
            let mut idx = vec![0usize; b.axes.len()];
            'combos: loop {
                // Later axes win; borrow, and clone the selector once per cell.
                let mut p = PartialRef::default();
                for (axis, &i) in b.axes.iter().zip(&idx) {
                    p.lay(&axis[i]);
                }
                let adaptation = resolve(kind, p);
                adaptation.validate().map_err(|e| ExpandError::Invalid {
                    block: bi,
                    message: e.to_string(),
                })?;
                let mut excluded = false;
                for (k, e) in b.exclude.iter().enumerate() {
                    if e.matches(&adaptation) {
                        used[k] = true;
                        excluded = true;
                    }
                }
                if !excluded {
                    let digest = prefix.digest(&adaptation);
                    let cell = Cell {
                        id: hex(digest),
                        block: bi,
                        adaptation,
                        finetune: b.finetune.clone(),
                    };
                    if let Some(&first_block) = seen.get(&digest) {
                        return Err(ExpandError::Duplicate {
                            block: bi,
                            first_block,
                            label: cell.label(),
                        });
                    }
                    seen.insert(digest, bi);
                    cells.push(cell);
                }
                // Odometer: the last axis turns fastest.
                let mut d = idx.len();
                loop {
                    if d == 0 {
                        break 'combos;
                    }
                    d -= 1;
                    idx[d] += 1;
                    if idx[d] < b.axes[d].len() {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
        if let Some(index) = used.iter().position(|u| !u) {
            return Err(ExpandError::UnusedExclude { block: bi, index });
        }
        if cells.len() == start {
            return Err(ExpandError::AllExcluded { block: bi });
        }
    }
    Ok(cells)
}

/// A combination of axis values, borrowed.
#[derive(Default)]
struct PartialRef<'a> {
    module: Option<&'a Selector>,
    rank: Option<usize>,
    alpha: Option<Alpha>,
    train_norms: Option<bool>,
}

impl<'a> PartialRef<'a> {
    fn lay(&mut self, p: &'a Partial) {
        if let Some(m) = &p.module {
            self.module = Some(m);
        }
        self.rank = p.rank.or(self.rank);
        self.alpha = p.alpha.or(self.alpha);
        self.train_norms = p.train_norms.or(self.train_norms);
    }
}

/// A full adaptation from a combination: alpha defaults to the rank, train_norms to false.
fn resolve(kind: AdaptationKind, p: PartialRef<'_>) -> AdaptationSpec {
    let alpha = if kind.is_adapter() {
        p.rank.map(|r| p.alpha.unwrap_or(Alpha::Rank).resolve(r))
    } else {
        p.alpha.map(|a| a.resolve(p.rank.unwrap_or(1)))
    };
    AdaptationSpec {
        kind,
        module: p.module.cloned(),
        rank: p.rank,
        alpha,
        train_norms: p.train_norms.unwrap_or(false),
    }
}

/// How many cells there are by kind, module and rank (for `plan`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CellCounts {
    pub total: usize,
    pub by_kind: BTreeMap<AdaptationKind, usize>,
    /// By selector text; `none` cells count under `-`.
    pub by_module: BTreeMap<String, usize>,
    /// Adapter cells only.
    pub by_rank: BTreeMap<usize, usize>,
}

pub fn counts(cells: &[Cell]) -> CellCounts {
    let mut c = CellCounts {
        total: cells.len(),
        ..CellCounts::default()
    };
    for cell in cells {
        let a = &cell.adaptation;
        *c.by_kind.entry(a.kind).or_default() += 1;
        let m = a.module.as_ref().map_or("-".to_string(), |m| m.to_string());
        *c.by_module.entry(m).or_default() += 1;
        if let Some(r) = a.rank {
            *c.by_rank.entry(r).or_default() += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::spec::parse;
    use std::path::Path;

    const SPEC: &str = "\
name: c
data: {source: a, target: b}
model: {features: [4, 8, 16]}
finetune: {steps: 10}
grid:
  - kind: none
  - kind: full
    module: [encoder, decoder]
  - kind: [lora-c, cp-lora]
    module: [decoder, all]
    rank: [4, 16]
    alpha: [rank, 2]
";

    fn cells(text: &str) -> Vec<Cell> {
        parse(text, Path::new("c.yaml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .cells
    }

    #[test]
    fn order_is_blocks_then_kinds_then_axes_last_fastest() {
        let c = cells(SPEC);
        let labels: Vec<String> = c.iter().map(Cell::label).collect();
        assert_eq!(labels.len(), 1 + 2 + 2 * 2 * 2 * 2);
        assert_eq!(
            &labels[..7],
            &[
                "none",
                "full/encoder",
                "full/decoder",
                "lora-c/decoder/r4",
                "lora-c/decoder/r4/a2",
                "lora-c/decoder/r16",
                "lora-c/decoder/r16/a2",
            ]
        );
        assert_eq!(labels[11], "cp-lora/decoder/r4");
        assert_eq!(c[0].block, 0);
        assert_eq!(c[11].block, 2);
        // alpha: rank resolves to a number, so `rank` and the equal number are one cell.
        assert_eq!(c[3].adaptation.alpha, Some(4.0));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = cells(SPEC);
        let b = cells(SPEC);
        assert_eq!(
            a.iter().map(|c| &c.id).collect::<Vec<_>>(),
            b.iter().map(|c| &c.id).collect::<Vec<_>>()
        );
        let mut ids: Vec<_> = a.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), a.len());
        for c in &a {
            assert_eq!(CellId::from_hex(c.id.as_str()), Some(c.id.clone()));
        }
        // Equivalent spellings hash alike: `1e-3` and `0.001`, an explicit alpha equal to rank.
        let x = cells(&SPEC.replace("steps: 10}", "steps: 10, lr: 1.0e-3}"));
        let y = cells(&SPEC.replace("steps: 10}", "steps: 10, lr: 0.001}"));
        assert_eq!(x[5].id, y[5].id);
        assert_eq!(x[0].id, a[0].id, "1e-3 is the default lr");
    }

    #[test]
    fn a_change_reaches_exactly_the_affected_cells() {
        let base = cells(SPEC);
        // A block override: only block 1's cells change.
        let over = cells(&SPEC.replace(
            "module: [encoder, decoder]\n",
            "module: [encoder, decoder]\n    finetune: {lr: 1.0e-4}\n",
        ));
        assert_eq!(base.len(), over.len());
        for (a, b) in base.iter().zip(&over) {
            assert_eq!(a.id == b.id, a.block != 1, "{}", a.label());
        }
        // A global setting reaches every cell.
        let steps = cells(&SPEC.replace("steps: 10", "steps: 11"));
        assert!(base.iter().zip(&steps).all(|(a, b)| a.id != b.id));
        // Adding a rank adds cells and keeps the others' ids.
        let more = cells(&SPEC.replace("rank: [4, 16]", "rank: [4, 16, 32]"));
        let old: std::collections::HashSet<_> = base.iter().map(|c| c.id.clone()).collect();
        let kept = more.iter().filter(|c| old.contains(&c.id)).count();
        assert_eq!(kept, base.len());
        assert_eq!(more.len(), base.len() + 2 * 2 * 2);
    }

    #[test]
    fn canonical_json_names_every_setting() {
        let c = &cells(SPEC)[3];
        let j = c.canonical_json();
        assert!(
            j.ends_with(
                r#","adaptation":{"kind":"lora-c","module":"decoder","rank":4,"alpha":4.0}}"#
            ),
            "{j}"
        );
        assert!(
            j.contains(r#""steps":10"#) && j.contains(r#""lr":0.001"#),
            "{j}"
        );
        // The id is the hash of exactly this text, whether built by expansion or by hand.
        let mut h = Sha256::new();
        h.update(format!("{CELL_ID_VERSION}\n{j}").as_bytes());
        let full: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(c.id.as_str(), full);
        assert_eq!(
            Cell::new(c.block, c.adaptation.clone(), c.finetune.clone()).id,
            c.id
        );
    }

    #[test]
    fn counts_by_kind_module_rank() {
        let n = counts(&cells(SPEC));
        assert_eq!(n.total, 19);
        assert_eq!(n.by_kind[&AdaptationKind::None], 1);
        assert_eq!(n.by_kind[&AdaptationKind::Full], 2);
        assert_eq!(n.by_kind[&AdaptationKind::CpLora], 8);
        assert_eq!(n.by_module["-"], 1);
        assert_eq!(n.by_module["decoder"], 1 + 8);
        assert_eq!(n.by_rank[&4], 8);
        assert_eq!(n.by_rank.values().sum::<usize>(), 16);
    }
}
