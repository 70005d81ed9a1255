//! The shipped sweep specs parse and expand as documented; a spec's cells go through the store.

use std::path::{Path, PathBuf};

use ranksweep::data::preprocess::View;
use ranksweep::model::AdaptationKind;
use ranksweep::store::{
    AttemptEnd, AttemptStart, ExitClass, JobStatus, NewJob, Stage, StatusCounts, Store,
};
use ranksweep::sweep::{self, Spec, counts};

fn spec(name: &str) -> Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sweeps")
        .join(name);
    sweep::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn paper_spec_is_the_full_study_grid() {
    let s = spec("paper.yaml");
    assert_eq!(s.name, "paper-grid");
    // none + 4 full + 6 kinds × 3 modules × 6 ranks.
    assert_eq!(s.cells.len(), 1 + 4 + 6 * 3 * 6);
    assert_eq!(s.finetune_jobs(), 113 * 3 * 3);
    assert_eq!(
        s.model.views,
        vec![View::Axial, View::Coronal, View::Sagittal]
    );
    assert_eq!(s.model.unet.features, vec![32, 64, 128, 256, 512]);
    assert_eq!(s.data.source, root().join("sweeps/../data/tbi"));
    assert_eq!((s.pretrain.steps, s.finetune.steps), (20_000, 3_000));
    let n = counts(&s.cells);
    assert_eq!(n.by_kind[&AdaptationKind::Full], 4);
    assert!(AdaptationKind::ADAPTERS.iter().all(|k| n.by_kind[k] == 18));
    assert_eq!(n.by_rank.len(), 6);
    assert!(n.by_rank.values().all(|&c| c == 18));
    assert_eq!(n.by_module["all"], 1 + 36);
    // alpha: rank → scale 1 everywhere.
    assert!(
        s.cells
            .iter()
            .filter(|c| c.adaptation.kind.is_adapter())
            .all(|c| c.adaptation.alpha == c.adaptation.rank.map(|r| r as f64))
    );
    assert_eq!(s.resources.retries, 2);
    assert_eq!(s.resources.timeout.as_secs(), 7200);
}

#[test]
fn quickstart_spec_is_small() {
    let s = spec("quickstart.yaml");
    assert_eq!(s.cells.len(), 14);
    assert_eq!(s.finetune_jobs(), 42);
    assert_eq!(s.model.views, vec![View::Axial]);
    assert_eq!(s.model.unet.features, vec![8, 16, 32, 64]);
    assert_eq!(s.seeds, vec![0]);
    assert!(
        s.cells
            .iter()
            .all(|c| c.adaptation.kind == AdaptationKind::None
                || c.adaptation.module.as_ref().map(|m| m.as_str()) == Some("decoder"))
    );
    let n = counts(&s.cells);
    assert_eq!((n.by_rank[&4], n.by_rank[&32]), (6, 6));
}

#[test]
fn nightly_spec_uses_overrides_zip_and_exclude() {
    let s = spec("nightly.yaml");
    // none + full + (6 kinds × 2 ranks − 1 excluded) + 2 zipped.
    assert_eq!(s.cells.len(), 1 + 1 + 11 + 2);
    let full = s
        .cells
        .iter()
        .find(|c| c.adaptation.kind == AdaptationKind::Full)
        .unwrap();
    assert_eq!(full.finetune.optim.lr, 1e-4);
    assert_eq!(full.finetune.steps, s.finetune.steps);
    assert!(!s.cells.iter().any(|c| c.label() == "dora-c/decoder/r4"));
    let zipped: Vec<String> = s.cells.iter().rev().take(2).map(|c| c.label()).collect();
    assert_eq!(zipped, ["conv-lora/all/r32/a64", "conv-lora/all/r8/a16"]);
}

#[test]
fn spec_cells_and_jobs_round_trip_through_the_store() {
    let s = spec("quickstart.yaml");
    let dir = tempfile::tempdir().unwrap();
    let mut st = Store::open(&dir.path().join("ranksweep.sqlite")).unwrap();
    let sw = st.upsert_sweep(&s.name, &s.file, &s.text).unwrap();
    st.upsert_cells(sw, &s.cells).unwrap();
    let jobs: Vec<NewJob> = s
        .cells
        .iter()
        .flat_map(|c| {
            (0..s.data.folds).map(move |fold| NewJob {
                key: format!("{}-{fold}", c.id),
                cell: Some(c.id.clone()),
                stage: Stage::Finetune,
                kind: Some(c.adaptation.kind),
                selector: c.adaptation.module.as_ref().map(|m| m.to_string()),
                rank: c.adaptation.rank,
                alpha: c.adaptation.alpha,
                fold: Some(fold),
                seed: 0,
                view: View::Axial,
                config_json: c.canonical_json(),
                needs: vec![],
            })
        })
        .collect();
    let summary = st.upsert_jobs(sw, &jobs).unwrap();
    assert_eq!(summary.inserted, 42);
    let a = st
        .record_attempt_start(
            sw,
            &jobs[0].key,
            &AttemptStart {
                run: None,
                host: "h".into(),
                device: "cpu".into(),
                pid: Some(1),
            },
        )
        .unwrap();
    st.record_attempt_end(
        a,
        &AttemptEnd {
            class: ExitClass::Ok,
            exit_code: Some(0),
            error: None,
        },
    )
    .unwrap();
    let cs = st.cell_status(sw).unwrap();
    assert_eq!(cs.len(), 14);
    assert_eq!(cs[0].label, s.cells[0].label());
    assert_eq!((cs[0].jobs, cs[0].done), (3, 1));
    assert_eq!(
        st.status_counts(sw).unwrap(),
        StatusCounts {
            pending: 41,
            running: 0,
            done: 1,
            failed: 0
        }
    );
    // A second plan of the same spec resumes: the finished job stays finished.
    drop(st);
    let mut st = Store::open(&dir.path().join("ranksweep.sqlite")).unwrap();
    assert_eq!(st.upsert_jobs(sw, &jobs).unwrap().inserted, 0);
    assert_eq!(
        st.job(sw, &jobs[0].key).unwrap().unwrap().status,
        JobStatus::Done
    );
}
