//! The ACPI power button, read from the kernel's input event devices.
//!
//! The kernel does not signal PID 1 when the power button is pressed (QMP
//! `system_powerdown`, `appliance stop`): it reports a `KEY_POWER` key press on the
//! button's input device, `/dev/input/eventN`, which an init without acpid must read
//! itself. The supervisor polls these devices with its signalfd and treats a press as a
//! stop request, like SIGTERM to PID 1.
//!
//! Needs the kernel's evdev and ACPI button drivers: built into the project's kernel,
//! the `evdev` and `button` modules in Debian's cloud kernel.

use alloc::format;
use alloc::vec::Vec;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};

/// `EV_KEY` and `KEY_POWER` of `<linux/input-event-codes.h>`.
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;
/// `struct input_event` on a 64-bit kernel: a 16-byte `struct timeval`, then type (u16),
/// code (u16) and value (i32).
const EVENT_SIZE: usize = 24;

/// Whether a device's key capability bitmap (`/sys/class/input/eventN/device/
/// capabilities/key`: hexadecimal words of the kernel's `long`, most significant first)
/// has `KEY_POWER`.
pub fn has_power_key(capabilities: &str) -> bool {
    let bits = usize::BITS as u16;
    let word = usize::from(KEY_POWER / bits);
    let bit = KEY_POWER % bits;
    let words: Vec<&str> = capabilities.split_whitespace().collect();
    let Some(index) = words.len().checked_sub(word + 1) else { return false };
    words.get(index).and_then(|w| u64::from_str_radix(w, 16).ok()).is_some_and(|w| w & (1u64 << bit) != 0)
}

/// Whether `events` (whole `struct input_event`s) hold a press of the power key.
pub fn has_press(events: &[u8]) -> bool {
    events.chunks_exact(EVENT_SIZE).any(|e| {
        let field = |at: usize| e.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let value = e.get(20..24).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        field(16) == Some(EV_KEY) && field(18) == Some(KEY_POWER) && value == Some(1)
    })
}

/// Opens every input event device that has a power key (non-blocking, close-on-exec).
pub fn open_buttons() -> Vec<OwnedFd> {
    let mut found = Vec::new();
    // No evdev (Debian's kernel without the module): no device nodes, nothing to list.
    if rustix::fs::access("/dev/input", rustix::fs::Access::EXISTS).is_err() {
        return found;
    }
    // Listed rather than probed by number: under emulation every failed open costs.
    let mut names = crate::read_dir("/sys/class/input").unwrap_or_default();
    names.retain(|name| name.strip_prefix("event").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())));
    names.sort();
    for name in names {
        let Some(caps) = crate::read_to_string(&format!("/sys/class/input/{name}/device/capabilities/key")) else {
            continue;
        };
        if !has_power_key(&caps) {
            continue;
        }
        let path = format!("/dev/input/{name}");
        match rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                log::debug!("power button: {path}");
                found.push(fd);
            }
            Err(e) => log::warn!("cannot open the power button {path}: {}", crate::console::Describe(e)),
        }
    }
    found
}

/// Reads what the device has and says whether the power key was pressed.
pub fn read_pressed(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        pressed |= has_press(buf.get(..n).unwrap_or_default());
    }
    pressed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = alloc::vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn power_key_capability_table() {
        let cases = [
            // The ACPI power button on a 6.1 kernel.
            ("10000000000000 0\n", true),
            // A keyboard: KEY_POWER among many.
            ("402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe\n", true),
            // A sleep button (KEY_SLEEP, 142), a mouse's buttons.
            ("4000 0\n", false),
            ("1f0000 0 0 0 0\n", false),
            ("0\n", false),
            ("", false),
            ("zz 0", false),
        ];
        for (caps, expected) in cases {
            assert_eq!(has_power_key(caps), expected, "{caps:?}");
        }
    }

    #[test]
    fn only_a_power_key_press_counts() {
        let press = event(EV_KEY, KEY_POWER, 1);
        let release = event(EV_KEY, KEY_POWER, 0);
        let sync = event(0, 0, 0);
        let other = event(EV_KEY, 142, 1);
        assert!(has_press(&[sync.clone(), press.clone(), sync.clone()].concat()));
        assert!(!has_press(&[release, sync, other].concat()));
        assert!(!has_press(&press[..EVENT_SIZE - 1]));
    }
}
