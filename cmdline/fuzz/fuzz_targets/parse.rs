//! Arbitrary bytes as `/proc/cmdline`: `parse` must not panic and must always give a valid
//! config; a line `parse_strict` accepts must render (unless too long) and parse back to
//! the same config.
#![no_main]

use appliance_cmdline::{Error, parse, parse_strict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    assert_eq!(parsed.config.validate(), Ok(()));
    if let Ok(config) = parse_strict(data) {
        assert_eq!(config, parsed.config);
        match config.render() {
            Ok(line) => assert_eq!(
                parse_strict(line.as_bytes()),
                Ok(config),
                "rendered as {line:?}"
            ),
            Err(Error::TooLong { .. }) => {}
            Err(e) => panic!("a clean command line does not render: {e}"),
        }
    }
});
