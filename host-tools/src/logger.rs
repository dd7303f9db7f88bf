//! Progress and warnings from the library (through the `log` facade) go to stderr,
//! keeping stdout for results that scripts read, such as the app dir path.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            Level::Error => eprintln!("appliance: error: {}", record.args()),
            Level::Warn => eprintln!("appliance: warning: {}", record.args()),
            _ => eprintln!("appliance: {}", record.args()),
        }
    }

    fn flush(&self) {}
}

pub fn init(level: LevelFilter) {
    static LOGGER: Stderr = Stderr;
    // Fails only if a logger is already set, which cannot happen in this binary.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
