//! Builds the dlopen test program, shared by the trace tests of the host tools
//! (host-tools/tests/trace.rs) and the boot test (tests/trace.rs) with `#[path]`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `prog`, which dlopen()s `libplug42.so` next to itself by a name it computes,
/// and the library, in `dir`. Returns their paths.
pub fn build_dlopen_program(dir: &Path) -> (PathBuf, PathBuf) {
    let prog_c = dir.join("prog.c");
    let plug_c = dir.join("plug.c");
    std::fs::write(&prog_c, include_str!("dlopen-prog.c")).unwrap();
    std::fs::write(&plug_c, "int answer(void) { return 42; }\n").unwrap();
    let program = dir.join("prog");
    let plugin = dir.join("libplug42.so");
    for args in [
        vec!["-shared".into(), "-fPIC".into(), "-o".into(), plugin.clone(), plug_c],
        vec!["-o".into(), program.clone(), prog_c, "-ldl".into()],
    ] {
        let status = Command::new("gcc").args(&args).status().expect("gcc runs (tests/run installs it)");
        assert!(status.success(), "gcc {args:?}");
    }
    (program, plugin)
}
