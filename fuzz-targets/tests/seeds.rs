//! Every committed fuzz input, replayed through its target under `cargo test`: the files of
//! `fuzz/seeds/<target>/` (crash inputs are committed there once fixed) and of
//! `fuzz/artifacts/<target>/` when a local fuzz run left some. One test per target, and one
//! that checks every target of the fuzz crate is replayed here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use netmux_fuzz_targets::TARGETS;

/// `ipc_decode` counts the process's descriptors, so the tests here run one at a time: no
/// other may open a file meanwhile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The names in `dir`: subdirectories, or files with extension `ext`.
fn names(dir: &Path, ext: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| match ext {
            Some(ext) => p.extension().is_some_and(|e| e == ext),
            None => p.is_dir(),
        })
        .map(|p| {
            let stem = p.file_stem().expect("a file name");
            stem.to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Replays every seed and artifact of `target`; there is at least one seed.
fn replay(target: &str) {
    let run = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"))
        .1;
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no input");
    let artifacts = files(&fuzz_dir().join("artifacts").join(target));
    for path in seeds.iter().chain(&artifacts) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
    eprintln!(
        "{target}: {} seeds, {} artifacts replayed",
        seeds.len(),
        artifacts.len()
    );
}

/// One test per target, `every_seed_passes::TARGET`; `REPLAYED` lists them.
macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        mod every_seed_passes {
            $(
                #[test]
                fn $target() {
                    super::replay(stringify!($target));
                }
            )*
        }
        const REPLAYED: &[&str] = &[$(stringify!($target)),*];
    };
}

replay_tests!(
    classifier,
    config_file,
    dhcp,
    filter_parse,
    firewall_rules,
    instances,
    ipc_decode,
    ndp,
    overlay_files,
    reassembly,
    vm_differential,
    vm_roundtrip,
    vm_verify,
    vxlan,
);

#[test]
fn every_fuzz_target_and_seed_directory_is_replayed_here() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    let dir = fuzz_dir();
    assert_eq!(names(&dir.join("fuzz_targets"), Some("rs")), listed);
    assert_eq!(names(&dir.join("seeds"), None), listed);
    assert_eq!(REPLAYED, listed);
}
