//! Sweeps: the declarative spec and its grid of cells.
//!
//! Owns the two input stages of a sweep (ripgrep's low/high args): [`SpecFile`] is the YAML as
//! written, [`Spec`] is validated with defaults filled, paths resolved and the grid expanded into
//! [`Cell`]s with stable [`CellId`]s. Both steps are pure functions of the text; errors carry
//! `file:line:column` and the field path. The planner (jobs = cells × views × folds × seeds)
//! builds on top.
//!
//! Key types: [`Spec`], [`Block`], [`Cell`], [`CellId`], [`SpecError`].

pub mod cells;
pub mod plan;
pub mod spec;
pub mod values;
pub mod yaml;

pub use cells::{Cell, CellCounts, CellId, ExpandError, counts, expand};
pub use spec::{
    Block, DataSpec, ModelSpec, Partial, Resources, Select, Spec, SpecError, SpecFile,
    TrainSettings, load, parse,
};
pub use values::Alpha;
