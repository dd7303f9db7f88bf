//! Which QEMU machine an appliance boots on, and the kernel words that machine needs.
//!
//! `microvm` has no PCI bus, no legacy chipset and little ACPI: nothing to probe, so a
//! kernel gets to `/init` sooner (its devices are virtio over MMIO, found through ACPI).
//! It needs a kernel with those drivers built in, which the project's kernels have and
//! Debian's cloud kernel has not (`virtio_mmio` is a module there): for such kernels, and
//! whenever the kernel's configuration is unknown, the machine stays `pc`. The choice is
//! made from the configuration the kernel was built with (`config` beside a kernel of
//! `appliance kernel build`, found through the app dir's `appliance.json` for an app dir's
//! `vmlinuz`).
//!
//! Under TCG, microvm's clock setup hangs now and then: with no HPET and no PM timer the
//! kernel calibrates the TSC against the PIT, emulated with too much jitter to pass, marks
//! the TSC unstable and stalls. The TSC of a TCG guest is the host's own counter (QEMU
//! reads it with `rdtsc`), so the host measures its frequency and hands it over with
//! `tsc_early_khz=`: no calibration at all, and nothing left to hang. `tests/bench/boot.sh`
//! boots it hundreds of times to show it.
//!
//! A kernel built with the project's `lapic-timer-period` patch (its `build.json` says
//! so) is given its local APIC timer's period under TCG, where it is known, instead of
//! calibrating it: a busy wait of 100-300 ms of a boot (`docs/boot-time.md`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::qemu::Accel;
use crate::kernel::kbuild::{self, LAPIC_TIMER_PERIOD_PATCH};

/// A QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// i440FX with PCI, ACPI and the legacy devices: boots any kernel.
    Pc,
    /// Virtio over MMIO, one ISA serial port plus ours, ACPI for the power button.
    Microvm,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Microvm => "microvm",
        }
    }

    pub fn from_name(name: &str) -> Option<Machine> {
        match name {
            "pc" => Some(Machine::Pc),
            "microvm" => Some(Machine::Microvm),
            _ => None,
        }
    }
}

/// Options a kernel must have built in (`=y`) to run on microvm as it runs on pc: the
/// virtio-MMIO transport, the UARTs of the console and the status record, and ACPI for
/// the power button `appliance stop` presses (microvm has no PC keyboard for Ctrl-Alt-Del).
pub const MICROVM_NEEDS: [&str; 4] = ["CONFIG_VIRTIO_MMIO", "CONFIG_SERIAL_8250", "CONFIG_ACPI", "CONFIG_ACPI_BUTTON"];

/// The machine for a kernel built with `config` (the text of its `.config`; `None` when
/// unknown), and why.
pub fn choose(config: Option<&str>) -> (Machine, String) {
    let Some(config) = config else {
        return (Machine::Pc, "the kernel's configuration is unknown: pc boots any kernel".into());
    };
    let missing: Vec<&str> = MICROVM_NEEDS.iter().copied().filter(|o| !built_in(config, o)).collect();
    if missing.is_empty() {
        (Machine::Microvm, "the kernel has virtio-MMIO, the UARTs and ACPI built in".into())
    } else {
        (Machine::Pc, format!("the kernel lacks {} built in, which microvm needs", missing.join(", ")))
    }
}

fn built_in(config: &str, option: &str) -> bool {
    config.lines().any(|l| l.strip_prefix(option).and_then(|rest| rest.strip_prefix('=')) == Some("y"))
}

/// How a kernel boots: on which machine, from which file, with which of the machine's
/// kernel words ([`kernel_params`]). `appliance run` and every node of `appliance exp`
/// boot through it.
#[derive(Debug, Clone)]
pub struct KernelBoot {
    pub machine: Machine,
    /// The file QEMU loads: the kernel given, or on microvm the uncompressed `vmlinux`
    /// beside a kernel the project built, which QEMU boots through PVH: no decompression
    /// (emulated instruction by instruction under TCG) and no firmware loading a bzImage.
    /// Measured on an idle 2-core host under TCG, images/hello on microvm, five
    /// alternating boots: 1.29 s wall (median) against 1.58 s.
    pub kernel: std::path::PathBuf,
    pub words: Vec<String>,
    /// Why this machine.
    pub why: String,
}

/// The boot of `kernel` (an app dir's `vmlinuz`, or one given instead) under `accel`:
/// on `requested` (a machine chosen by hand, and why) or else the machine [`choose`]
/// takes for the kernel's configuration.
pub fn plan(
    kernel: &Path,
    app_dir: &Path,
    requested: Option<(Machine, String)>,
    accel: Accel,
    cpus: u32,
) -> KernelBoot {
    let built = build_dir(kernel, app_dir);
    let config = built.as_ref().and_then(|d| std::fs::read_to_string(d.join("config")).ok());
    let (machine, why) = requested.unwrap_or_else(|| choose(config.as_deref()));
    let apic_period = built.as_deref().zip(config.as_deref()).and_then(|(d, c)| apic_timer_period(d, c));
    let vmlinux = built.map(|d| d.join("vmlinux")).filter(|v| v.is_file());
    let kernel = match (machine, vmlinux) {
        (Machine::Microvm, Some(vmlinux)) => vmlinux,
        _ => kernel.to_path_buf(),
    };
    let tsc_khz = (machine == Machine::Microvm && accel == Accel::Tcg).then(host_tsc_khz_cached).flatten();
    KernelBoot { machine, kernel, words: kernel_params(machine, accel, tsc_khz, apic_period, cpus), why }
}

/// The local APIC timer's period (bus clocks per jiffy) under QEMU's emulation, for a
/// kernel built in `dir` with the `lapic-timer-period` patch: QEMU's APIC timer counts
/// at 1 GHz, so 10^9 / HZ. `None` for a kernel without the patch, which would not know
/// the parameter, or whose HZ is not in its `config`.
fn apic_timer_period(dir: &Path, config: &str) -> Option<u32> {
    let patched = kbuild::facts_in(dir)?.patches.iter().any(|p| p == LAPIC_TIMER_PERIOD_PATCH);
    let hz: u32 = config.lines().find_map(|l| l.strip_prefix("CONFIG_HZ="))?.trim().parse().ok()?;
    (patched && hz > 0).then(|| 1_000_000_000 / hz)
}

/// The directory `appliance kernel build` left `kernel` in (it holds `config`): the
/// kernel's own, or, for an app dir's `vmlinuz` (a link or a copy), the one of the kernel
/// its `appliance.json` names.
fn build_dir(kernel: &Path, app_dir: &Path) -> Option<std::path::PathBuf> {
    let beside = |k: &Path| -> Option<std::path::PathBuf> {
        let dir = k.canonicalize().ok()?.parent()?.to_path_buf();
        dir.join("config").is_file().then_some(dir)
    };
    if let Some(dir) = beside(kernel) {
        return Some(dir);
    }
    let same_file = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if !same_file(kernel, &app_dir.join("vmlinuz")) {
        return None;
    }
    let json = std::fs::read_to_string(app_dir.join("appliance.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&json).ok()?;
    let named = Path::new(value.get("kernel")?.as_str()?);
    // The app dir's kernel must still be that one (same size), not a replaced vmlinuz.
    let len = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    (len(named) == len(kernel)).then(|| beside(named)).flatten()
}

/// Kernel words for `machine` under `accel` with `cpus` CPUs, each with its reason.
/// `tsc_khz` is the host's TSC frequency (see `host_tsc_khz`); `apic_period` the local
/// APIC timer's period under TCG, for a kernel that takes it (see `apic_timer_period`).
pub fn kernel_params(
    machine: Machine,
    accel: Accel,
    tsc_khz: Option<u64>,
    apic_period: Option<u32>,
    cpus: u32,
) -> Vec<String> {
    let mut words = vec![
        // The kernel checks that the IO-APIC delivers the PIT's timer interrupt by waiting
        // for ticks; under TCG on a loaded host that check can fail and panic ("IO-APIC +
        // timer doesn't work"). QEMU's interrupt routing is known to work.
        "no_timer_check".to_string(),
    ];
    if machine == Machine::Microvm {
        // No PCI bus to look for (the kernel would print "PCI: Fatal: No config space
        // access function found"): every device is on MMIO.
        words.push("pci=off".to_string());
    }
    if let (Machine::Microvm, Accel::Tcg, Some(khz)) = (machine, accel, tsc_khz) {
        // See the module's comment: no TSC calibration, which can hang on microvm.
        words.push(format!("tsc_early_khz={khz}"));
        // The TSC is the only clock there; nothing to watch it against.
        words.push("tsc=reliable".to_string());
    }
    if let (Accel::Tcg, Some(period)) = (accel, apic_period) {
        // The period the kernel would measure by busy-waiting 25 PIT ticks (100-300 ms
        // under TCG): on every machine and for every CPU, no calibration. Under KVM the
        // TSC-deadline timer needs none either.
        words.push(format!("lapic_timer_period={period}"));
    } else if (machine, accel, cpus) == (Machine::Pc, Accel::Tcg, 1) {
        // The kernel calibrates the local APIC timer by counting its ticks over 100 ms of
        // the PIT's (a busy wait, under TCG longer and varying with the host's load): about
        // 100 ms of a boot of Debian's kernel. With one CPU the HPET serves as the tick and
        // high-resolution timer device instead, and there is nothing to calibrate. Not on
        // microvm, which has no HPET: there the PIT would be that device, and its one-shot
        // mode stalls under QEMU (timers stop firing once several sleepers are waiting:
        // `sleep 0.2` never returned beside a tree of `sleep 10` loops). Not with more CPUs,
        // which each need their own timer; not under KVM, whose TSC-deadline timer needs
        // no calibration.
        words.push("nolapic_timer".to_string());
    }
    words
}

/// [`host_tsc_khz`], measured once per boot of the host and kept in the cache
/// (`<cache>/host-tsc-khz`: the host's boot id and the frequency), which saves every
/// later run the 25 ms the measurement takes: an invariant TSC keeps its frequency until
/// the host reboots. Measured every time when there is no cache to keep it in.
pub fn host_tsc_khz_cached() -> Option<u64> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    let Ok(path) = crate::kernel::default_cache_dir().map(|d| d.join("host-tsc-khz")) else {
        return host_tsc_khz();
    };
    if let Some(khz) = cached_tsc_khz(&std::fs::read_to_string(&path).unwrap_or_default(), &boot_id) {
        return Some(khz);
    }
    let khz = host_tsc_khz()?;
    // Written whole or not at all (a temporary file renamed), so a concurrent run reads
    // either nothing or the complete line; a cache that cannot be written costs nothing.
    let _ = (|| -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, format!("{boot_id} {khz}\n").as_bytes())?;
        tmp.persist(&path).map(drop).map_err(|e| e.error)
    })();
    Some(khz)
}

/// The frequency in the cache file's `text` when it was measured during the boot
/// `boot_id`.
fn cached_tsc_khz(text: &str, boot_id: &str) -> Option<u64> {
    let (id, khz) = text.trim().split_once(' ')?;
    let khz: u64 = khz.parse().ok()?;
    (id == boot_id && (100_000..20_000_000).contains(&khz)).then_some(khz)
}

/// The host's TSC frequency in kHz, measured against the monotonic clock over a few
/// milliseconds (the best of three, which a preemption in between cannot spoil). `None`
/// when the CPU has no invariant TSC or this is not x86-64.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    // Without a constant, non-stop TSC the guest's clock would drift with the host's
    // frequency scaling.
    if !["constant_tsc", "nonstop_tsc"].iter().all(|f| flags.split_whitespace().any(|x| x == *f)) {
        return None;
    }
    let mut best: Option<(u64, Duration)> = None;
    for _ in 0..3 {
        let (ticks, spent, window) = measure(Duration::from_millis(8))?;
        // The sample whose clock reads took least time around the window is the truest.
        if best.is_none_or(|(_, w)| window < w) {
            best = Some((ticks * 1_000_000 / u64::try_from(spent.as_nanos()).ok()?.max(1), window));
        }
    }
    best.map(|(khz, _)| khz)
}

/// TSC ticks over about `span`, the time they took, and how long the bracketing reads
/// took (the uncertainty).
#[cfg(target_arch = "x86_64")]
fn measure(span: Duration) -> Option<(u64, Duration, Duration)> {
    // Reading the TSC is one instruction with no crate around it; `_rdtsc` is safe to
    // call on every x86-64 CPU (the instruction is part of the base architecture).
    let tsc = || {
        // SAFETY: rdtsc has no preconditions on x86-64 and touches no memory.
        unsafe { core::arch::x86_64::_rdtsc() }
    };
    let t0 = Instant::now();
    let c0 = tsc();
    let t0b = Instant::now();
    while t0.elapsed() < span {
        std::hint::spin_loop();
    }
    let t1 = Instant::now();
    let c1 = tsc();
    let t1b = Instant::now();
    let spent = t1.duration_since(t0);
    Some((c1.checked_sub(c0)?, spent, (t0b - t0) + (t1b - t1)))
}

#[cfg(not(target_arch = "x86_64"))]
fn measure(_span: Duration) -> Option<(u64, Duration, Duration)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "CONFIG_VIRTIO_MMIO=y\nCONFIG_SERIAL_8250=y\nCONFIG_ACPI=y\nCONFIG_ACPI_BUTTON=y\n";

    #[test]
    fn microvm_only_for_kernels_with_its_drivers_built_in() {
        assert_eq!(choose(Some(OURS)).0, Machine::Microvm);
        assert_eq!(choose(None).0, Machine::Pc);
        let debian = OURS.replace("CONFIG_VIRTIO_MMIO=y", "CONFIG_VIRTIO_MMIO=m");
        let (m, why) = choose(Some(&debian));
        assert_eq!(m, Machine::Pc);
        assert!(why.contains("CONFIG_VIRTIO_MMIO"), "{why}");
        let (m, why) = choose(Some("CONFIG_SERIAL_8250=y\n# CONFIG_ACPI is not set\n"));
        assert_eq!(m, Machine::Pc);
        assert!(why.contains("CONFIG_VIRTIO_MMIO, CONFIG_ACPI, CONFIG_ACPI_BUTTON"), "{why}");
        // A prefix of another option is not that option.
        assert_eq!(choose(Some(&OURS.replace("CONFIG_ACPI=y\n", "CONFIG_ACPI_X=y\n"))).0, Machine::Pc);
    }

    #[test]
    fn names_round_trip() {
        for m in [Machine::Pc, Machine::Microvm] {
            assert_eq!(Machine::from_name(m.name()), Some(m));
        }
        assert_eq!(Machine::from_name("q35"), None);
    }

    #[test]
    fn the_tsc_frequency_goes_to_microvm_under_tcg_only() {
        let with = |m, a| kernel_params(m, a, Some(2_300_000), None, 1);
        assert!(with(Machine::Microvm, Accel::Tcg).contains(&"tsc_early_khz=2300000".to_string()));
        assert!(!with(Machine::Pc, Accel::Tcg).iter().any(|w| w.starts_with("tsc")));
        assert!(!with(Machine::Microvm, Accel::Kvm).iter().any(|w| w.starts_with("tsc")));
        assert!(with(Machine::Pc, Accel::Kvm).contains(&"no_timer_check".to_string()));
    }

    #[test]
    fn the_apic_timer_is_left_uncalibrated_on_pc_under_tcg_with_one_cpu_only() {
        let off = |m, a, cpus| kernel_params(m, a, None, None, cpus).contains(&"nolapic_timer".to_string());
        assert!(off(Machine::Pc, Accel::Tcg, 1));
        assert!(!off(Machine::Microvm, Accel::Tcg, 1), "no HPET there: the PIT's one-shot mode stalls");
        assert!(!off(Machine::Pc, Accel::Tcg, 4));
        assert!(!off(Machine::Pc, Accel::Kvm, 1));
    }

    #[test]
    fn a_patched_kernel_gets_its_apic_timer_period_under_tcg_instead_of_nolapic_timer() {
        let words = |m, a, cpus| kernel_params(m, a, None, Some(4_000_000), cpus);
        for (m, cpus) in [(Machine::Microvm, 1), (Machine::Microvm, 4), (Machine::Pc, 1), (Machine::Pc, 2)] {
            let w = words(m, Accel::Tcg, cpus);
            assert!(w.contains(&"lapic_timer_period=4000000".to_string()), "{m:?} {cpus}: {w:?}");
            assert!(!w.contains(&"nolapic_timer".to_string()), "{m:?} {cpus}: {w:?}");
        }
        assert!(!words(Machine::Microvm, Accel::Kvm, 1).iter().any(|w| w.starts_with("lapic")));
    }

    #[test]
    fn the_apic_timer_period_comes_from_build_json_and_hz() {
        let tmp = tempfile::tempdir().unwrap();
        let config = "CONFIG_HZ_250=y\nCONFIG_HZ=250\n";
        assert_eq!(apic_timer_period(tmp.path(), config), None, "no build.json: not one of ours");
        // A build.json as `appliance kernel build` writes it.
        let facts = |patches: &[&str]| {
            serde_json::json!({
                "release": "6.1.192-appliance", "version": "6.1.192", "series": "6.1", "base": "tinyconfig",
                "fragments": ["base.config"], "source": "/usr/src/linux-source-6.1.tar.xz",
                "key": "6.1-tinyconfig-0", "checked": 92, "patches": patches, "build_seconds": 400,
                "steps": 2003, "built_at": 0
            })
        };
        std::fs::write(tmp.path().join("build.json"), facts(&["no-initmem-poison"]).to_string()).unwrap();
        assert_eq!(apic_timer_period(tmp.path(), config), None, "built without the patch");
        std::fs::write(tmp.path().join("build.json"), facts(&[LAPIC_TIMER_PERIOD_PATCH]).to_string()).unwrap();
        assert_eq!(apic_timer_period(tmp.path(), config), Some(4_000_000));
        assert_eq!(apic_timer_period(tmp.path(), "CONFIG_HZ=1000\n"), Some(1_000_000));
        assert_eq!(apic_timer_period(tmp.path(), "# CONFIG_HZ is unknown\n"), None);
        // A build.json from before patches were recorded.
        let mut old = facts(&[]);
        old.as_object_mut().unwrap().remove("patches");
        std::fs::write(tmp.path().join("build.json"), old.to_string()).unwrap();
        assert_eq!(apic_timer_period(tmp.path(), config), None);
    }

    #[test]
    fn config_and_vmlinux_are_found_beside_the_kernel_or_through_appliance_json() {
        let tmp = tempfile::tempdir().unwrap();
        let built = tmp.path().join("build");
        std::fs::create_dir(&built).unwrap();
        std::fs::write(built.join("bzImage"), b"kernel").unwrap();
        std::fs::write(built.join("config"), OURS).unwrap();
        let boot = |kernel: &Path, app: &Path| plan(kernel, app, None, Accel::Kvm, 1);
        assert_eq!(boot(&built.join("bzImage"), tmp.path()).machine, Machine::Microvm);
        let app = tmp.path().join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::write(app.join("vmlinuz"), b"kernel").unwrap();
        let json = serde_json::json!({ "kernel": built.join("bzImage") }).to_string();
        std::fs::write(app.join("appliance.json"), json).unwrap();
        let b = boot(&app.join("vmlinuz"), &app);
        assert_eq!((b.machine, b.kernel), (Machine::Microvm, app.join("vmlinuz")), "no vmlinux beside it yet");
        std::fs::write(built.join("vmlinux"), b"elf").unwrap();
        assert_eq!(boot(&app.join("vmlinuz"), &app).kernel, built.canonicalize().unwrap().join("vmlinux"));
        // On pc, chosen by hand, the kernel given boots.
        let pc = plan(&app.join("vmlinuz"), &app, Some((Machine::Pc, "by hand".into())), Accel::Tcg, 1);
        assert_eq!((pc.machine, pc.kernel, pc.why.as_str()), (Machine::Pc, app.join("vmlinuz"), "by hand"));
        // A vmlinuz replaced by another kernel is not the one appliance.json names.
        std::fs::write(app.join("vmlinuz"), b"another kernel").unwrap();
        let b = boot(&app.join("vmlinuz"), &app);
        assert_eq!((b.machine, b.kernel), (Machine::Pc, app.join("vmlinuz")));
    }

    #[test]
    fn a_cached_tsc_frequency_counts_for_the_boot_it_was_measured_in_only() {
        let id = "0b6f7c1e-8a4d-4d55-9d0e-2f1c3b4a5d6e";
        assert_eq!(cached_tsc_khz(&format!("{id} 2299999\n"), id), Some(2_299_999));
        assert_eq!(cached_tsc_khz(&format!("{id} 2299999\n"), "another-boot"), None);
        assert_eq!(cached_tsc_khz("", id), None);
        assert_eq!(cached_tsc_khz(&format!("{id} fast\n"), id), None);
        assert_eq!(cached_tsc_khz(&format!("{id} 0\n"), id), None, "not a frequency");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_host_tsc_frequency_is_measured_when_the_tsc_is_invariant() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap();
        let invariant = ["constant_tsc", "nonstop_tsc"].iter().all(|f| flags.split_whitespace().any(|x| x == *f));
        let khz = host_tsc_khz();
        assert_eq!(khz.is_some(), invariant, "{khz:?}");
        if let Some(khz) = khz {
            assert!((100_000..20_000_000).contains(&khz), "{khz} kHz");
        }
    }
}
