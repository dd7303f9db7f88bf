//! Arbitrary bytes as an initramfs: reading must not panic, whatever the compression or
//! the headers say, at once or as a stream; whatever reads cleanly must rewrite (when its
//! names are acceptable to the writer) and read back with the same members.
#![no_main]

use appliance_host::archive::cpio::read::{Stream, read_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for member in Stream::new(data, true) {
        let Ok((member, size)) = member else { break };
        assert_eq!(member.data.len() as u64, size);
    }
    let Ok(archive) = read_bytes(data) else { return };
    for member in &archive.members {
        let _ = member.path();
        let _ = member.symlink_target();
    }
    let Ok(rewritable) = archive.to_archive() else { return };
    let mut out = Vec::new();
    let Ok(summary) = rewritable.write(&mut out, 0) else { return };
    let again = read_bytes(&out).expect("our own output reads back");
    assert_eq!(again.members.len(), summary.entries);
    for entry in rewritable.entries() {
        let member = again.members.iter().find(|m| m.name == entry.path()).expect("every entry is written");
        assert_eq!(member.permissions(), entry.mode());
    }
});
