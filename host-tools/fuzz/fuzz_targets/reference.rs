//! Arbitrary text as `REGISTRY/REPO[:VERSION]` (a command-line argument, and the name
//! `appliance run` tells apart from a path): parsing must not panic, and whatever parses
//! must render back to the same text and parse again to the same reference.
#![no_main]

use appliance_host::publish::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = appliance_host::publish::reference::looks_like_reference(text);
    let Ok(reference) = Reference::parse(text) else { return };
    assert_eq!(reference.to_string(), text);
    assert_eq!(Reference::parse(&reference.to_string()), Ok(reference));
});
