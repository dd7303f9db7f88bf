//! The QEMU command line for an appliance, as data: every argument has its reason beside
//! it, and tests check the argv without starting anything.

use std::path::{Path, PathBuf};

use crate::host::process::find_program;

pub use super::machine::Machine;

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation: works everywhere, slower.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Chooses KVM only when it really works: the device opens read-write *and* the CPU
/// advertises vmx or svm. A `/dev/kvm` node alone proves nothing (nested setups expose
/// one whose guests hang). `APPLIANCE_ACCEL=tcg|kvm` overrides. Returns the choice and
/// why, for `--verbose` and `--dry-run`.
pub fn detect_accel() -> (Accel, String) {
    match std::env::var("APPLIANCE_ACCEL").ok().as_deref() {
        Some("kvm") => return (Accel::Kvm, "APPLIANCE_ACCEL=kvm".into()),
        Some("tcg") => return (Accel::Tcg, "APPLIANCE_ACCEL=tcg".into()),
        _ => {}
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    accel_from(cpuinfo_has_virt(&cpuinfo), kvm_device_usable(Path::new("/dev/kvm")))
}

fn accel_from(cpu_virt: bool, device: Result<(), String>) -> (Accel, String) {
    match (cpu_virt, device) {
        (true, Ok(())) => (Accel::Kvm, "/dev/kvm is usable and the CPU has vmx/svm".into()),
        (false, _) => (Accel::Tcg, "the CPU does not advertise vmx/svm (no working KVM): using TCG".into()),
        (true, Err(e)) => (Accel::Tcg, format!("{e}: using TCG")),
    }
}

/// Whether a `flags` line of /proc/cpuinfo lists vmx (Intel) or svm (AMD).
pub fn cpuinfo_has_virt(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn kvm_device_usable(dev: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(drop)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))
}

/// Everything that decides the QEMU command line.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// The machine type (`super::machine::choose`).
    pub machine: Machine,
    /// Where the guest's second serial port (the status record) goes.
    pub status_file: PathBuf,
    /// QEMU user-mode networking for the guest, if any.
    pub net: Option<UserNet>,
    /// Host directories shared over virtio 9p.
    pub shares: Vec<Share9p>,
    /// virtio-serial ports whose guest output QEMU writes to host files.
    pub ports: Vec<PortToFile>,
    /// A QMP socket to control the VM from outside (graceful power-off).
    pub qmp: Option<PathBuf>,
    /// Extra QEMU arguments, appended last.
    pub extra: Vec<String>,
    /// Boot this disk under UEFI firmware instead of `kernel`, `initrd` and `append`
    /// (which then only say what the disk holds).
    pub disk: Option<DiskBoot>,
    /// Give QEMU `initrd` as it is even under TCG, where the run otherwise hands it a
    /// decompressed copy (`plain_initrd` in `vm/mod.rs`).
    pub initrd_as_is: bool,
}

/// A disk image booted by UEFI firmware (OVMF), as a machine without a kernel given boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBoot {
    pub image: PathBuf,
    /// `qemu-img`'s name of its format (`raw`, `qcow2`, `vmdk`, ...).
    pub format: String,
    pub firmware: Ovmf,
}

/// The firmware's code, and the run's own copy of its variable store (the firmware writes
/// to it, so never the shared template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Debian's `ovmf`: the 4 MiB build without Secure Boot, and its empty variable store.
/// The 4 MiB build has room for more variables than the 2 MiB one, and without SMM it runs
/// on the `pc` machine.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Copies the firmware's variable template into `dir` for one run; says what to install
/// when the firmware is missing.
pub fn ovmf_for_run(dir: &Path) -> Result<Ovmf, String> {
    let (code, template) = (PathBuf::from(OVMF_CODE), Path::new(OVMF_VARS));
    if !code.exists() || !template.exists() {
        return Err(format!(
            "no UEFI firmware at {OVMF_CODE}: install it (Debian/Ubuntu: `sudo apt-get install ovmf`)"
        ));
    }
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(template, &vars).map_err(|e| format!("cannot copy {OVMF_VARS} to {}: {e}", vars.display()))?;
    Ok(Ovmf { code, vars })
}

/// The firmware and the disk, for [`argv`].
fn disk_args(disk: &DiskBoot) -> Vec<String> {
    let quote = |p: &Path| p.display().to_string().replace(',', ",,");
    vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={}", quote(&disk.firmware.code)),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", quote(&disk.firmware.vars)),
        // virtio-blk: OVMF drives it, and so do both kernels. snapshot=on: nothing the
        // guest writes reaches the image, which stays as it was built (and a streamOptimized
        // vmdk is not writable anyway).
        "-drive".into(),
        format!("if=virtio,format={},snapshot=on,file={}", disk.format, quote(&disk.image)),
    ]
}

/// QEMU's user-mode network (slirp): no privileges, no host configuration. The guest is
/// 10.0.2.15 (DHCP), the gateway 10.0.2.2 is the host's loopback, 10.0.2.3 is DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    /// The NIC's MAC address; QEMU's default (52:54:00:12:34:56) when unset.
    pub mac: Option<String>,
    /// TCP ports on the host's loopback forwarded to the guest.
    pub forwards: Vec<PortForward>,
}

/// `127.0.0.1:host` on the host reaches `guest` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// A host directory the guest mounts with `mount -t 9p -o trans=virtio <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share9p {
    pub tag: String,
    pub path: PathBuf,
    pub readonly: bool,
}

/// A virtio-serial port named `name` in the guest (`/sys/class/virtio-ports/*/name`),
/// whose output QEMU writes to the host file `path` (created, or truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortToFile {
    pub name: String,
    pub path: PathBuf,
}

/// Where the guest sees the host's loopback under user networking.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// `-machine` for `machine`. `pc` (i440FX) for kernels that need PCI: measured under TCG
/// with Debian's 6.1 cloud kernel and images/hello (wall time of three boots each), `pc`
/// 2.62-2.76 s, `q35` 2.47-3.10 s (more chipset emulated for nothing an appliance uses,
/// and more variance). `microvm` for the project's kernels (see `super::machine`);
/// `pit=on`: the kernel calibrates its local APIC timer against the PIT, and without one
/// it waits for ticks that never come.
fn machine_arg(machine: Machine, accel: Accel) -> String {
    match machine {
        Machine::Pc => format!("pc,accel={}", accel.as_str()),
        Machine::Microvm => format!("microvm,pit=on,accel={}", accel.as_str()),
    }
}

/// Kernel parameters every `appliance run` passes before the appliance's own.
pub fn base_kernel_params(verbose: bool) -> Vec<&'static str> {
    let mut p = vec![
        // The first serial port is the console the user watches.
        "console=ttyS0",
        // A kernel panic reboots at once, and -no-reboot turns that into QEMU exiting:
        // an unattended run never hangs on a panic.
        "panic=-1",
    ];
    if !verbose {
        // Kernel messages below warnings stay in the log; the console shows the app.
        p.push("quiet");
    }
    p
}

/// The argv (without argv[0]) for `spec`.
pub fn argv(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // No default devices (VGA, NIC, floppy, CD-ROM, parallel port): less to emulate
    // and probe at boot, and nothing the appliance did not ask for.
    push(&["-nodefaults", "-no-user-config"]);
    push(&["-machine", &machine_arg(spec.machine, spec.accel)]);
    if spec.accel == Accel::Kvm {
        // Under KVM the guest may use every feature of the host CPU.
        push(&["-cpu", "host"]);
    }
    push(&["-m", &spec.memory_mib.to_string(), "-smp", &spec.cpus.to_string()]);
    push(&["-display", "none"]);
    // The console: stdio multiplexed with the monitor, so Ctrl-A X quits QEMU while
    // Ctrl-C goes to the guest (signal=off) as on a real serial line.
    push(&["-chardev", "stdio,id=console,mux=on,signal=off"]);
    push(&["-serial", "chardev:console", "-mon", "chardev=console,mode=readline"]);
    // The second serial port (ttyS1) carries the init's status record to the host.
    // microvm has one ISA UART of its own; the second goes where a PC has it (COM2), so
    // the kernel finds it as ttyS1 there too.
    match spec.machine {
        Machine::Pc => push(&["-serial", &format!("file:{}", spec.status_file.display())]),
        Machine::Microvm => {
            let path = spec.status_file.display().to_string().replace(',', ",,");
            push(&["-chardev", &format!("file,id=status,path={path}")]);
            push(&["-device", "isa-serial,chardev=status,iobase=0x2f8,irq=3"]);
        }
    }
    // A reboot ends the run instead of booting the appliance again (and a kernel panic,
    // with panic=-1, ends it too).
    push(&["-no-reboot"]);
    match &spec.disk {
        Some(disk) => a.extend(disk_args(disk)),
        None => {
            let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
            push(&["-kernel", &spec.kernel.display().to_string()]);
            push(&["-initrd", &spec.initrd.display().to_string()]);
            push(&["-append", &spec.append]);
        }
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    if let Some(net) = &spec.net {
        // virtio-net: the fastest NIC QEMU emulates, and the one both kernels drive
        // (built into ours, the virtio_net module in Debian's). Forwards listen on the
        // host's loopback only.
        let mut user = String::from("user,id=net0");
        for f in &net.forwards {
            user.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
        }
        let mut nic = format!("{},netdev=net0", virtio(spec.machine, "net"));
        if let Some(mac) = &net.mac {
            nic.push_str(&format!(",mac={mac}"));
        }
        push(&["-netdev", &user, "-device", &nic]);
    }
    for (i, share) in spec.shares.iter().enumerate() {
        // security_model=none: files keep the ownership of whoever runs QEMU; the guest
        // cannot change it. Good enough for results and data, and needs no root.
        let path = share.path.display().to_string().replace(',', ",,");
        let mut fs = format!("local,id=fs{i},path={path},security_model=none");
        if share.readonly {
            fs.push_str(",readonly=on");
        }
        let dev = format!("{},fsdev=fs{i},mount_tag={}", virtio(spec.machine, "9p"), share.tag);
        push(&["-fsdev", &fs, "-device", &dev]);
    }
    if !spec.ports.is_empty() {
        // virtio-serial rather than a third 16550: no per-byte emulation (over 100 MB/s
        // under TCG against a few for a UART), and the project's kernel has two UARTs only.
        push(&["-device", &format!("{},id=ports", virtio(spec.machine, "serial"))]);
    }
    for (i, port) in spec.ports.iter().enumerate() {
        // QEMU's option syntax doubles a comma inside a value.
        let path = port.path.display().to_string().replace(',', ",,");
        push(&["-chardev", &format!("file,id=port{i},path={path}")]);
        push(&["-device", &format!("virtserialport,bus=ports.0,chardev=port{i},name={}", port.name)]);
    }
    if let Some(qmp) = &spec.qmp {
        // A control socket for `appliance stop`: system_powerdown presses the ACPI power
        // button. wait=off: QEMU does not wait for a client before starting the guest.
        push(&["-qmp", &format!("unix:{},server=on,wait=off", qmp.display())]);
    }
    a.extend(spec.extra.iter().cloned());
    a
}

/// The QEMU device of virtio `kind` on `machine`: over PCI on pc, over MMIO on microvm.
pub fn virtio(machine: Machine, kind: &str) -> String {
    match machine {
        Machine::Pc => format!("virtio-{kind}-pci"),
        Machine::Microvm => format!("virtio-{kind}-device"),
    }
}

/// `argv` as one line a shell would accept, for `--dry-run`.
pub fn shell_line(program: &Path, argv: &[String]) -> String {
    let program = program.display().to_string();
    appliance_cmdline::join_words(&[&[program], argv].concat())
}

/// Finds `qemu-system-x86_64` in PATH, or says what to install.
pub fn find_qemu() -> Result<PathBuf, String> {
    let name = "qemu-system-x86_64";
    find_program(name).ok_or_else(|| {
        format!("{name} not found in PATH: install it (Debian/Ubuntu: `sudo apt-get install qemu-system-x86`)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd".into(),
            append: "console=ttyS0 appArgs=1".into(),
            memory_mib: 256,
            cpus: 1,
            accel,
            machine: Machine::Pc,
            status_file: "/tmp/s.jsonl".into(),
            net: None,
            shares: vec![],
            ports: vec![],
            qmp: None,
            extra: vec!["-nic".into(), "user".into()],
            disk: None,
            initrd_as_is: false,
        }
    }

    #[test]
    fn a_disk_boots_under_the_firmware_instead_of_a_kernel() {
        let mut s = spec(Accel::Tcg);
        s.disk = Some(DiskBoot {
            image: "/d/a,b.qcow2".into(),
            format: "qcow2".into(),
            firmware: Ovmf { code: "/fw/code.fd".into(), vars: "/run/vars.fd".into() },
        });
        let a = argv(&s);
        assert!(after(&a, "-kernel").is_empty() && after(&a, "-append").is_empty());
        assert_eq!(
            after(&a, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw/code.fd",
                "if=pflash,format=raw,unit=1,file=/run/vars.fd",
                "if=virtio,format=qcow2,snapshot=on,file=/d/a,,b.qcow2"
            ]
        );
        assert_eq!(after(&a, "-serial"), ["chardev:console", "file:/tmp/s.jsonl"]);
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn argv_has_console_then_status_port_and_the_kernel() {
        let a = argv(&spec(Accel::Tcg));
        assert_eq!(after(&a, "-serial"), ["chardev:console", "file:/tmp/s.jsonl"]);
        assert_eq!(after(&a, "-machine"), ["pc,accel=tcg"]);
        assert_eq!(after(&a, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(after(&a, "-initrd"), ["/k/initrd"]);
        assert_eq!(after(&a, "-append"), ["console=ttyS0 appArgs=1"]);
        assert_eq!(after(&a, "-m"), ["256"]);
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(!a.contains(&"-cpu".to_string()));
        assert_eq!(a[a.len() - 2..], ["-nic".to_string(), "user".to_string()]);
    }

    #[test]
    fn user_net_shares_and_qmp() {
        let mut s = spec(Accel::Tcg);
        s.net = Some(UserNet {
            mac: Some("52:54:00:00:00:01".into()),
            forwards: vec![PortForward { host: 2222, guest: 22 }],
        });
        s.shares = vec![Share9p { tag: "results".into(), path: "/r".into(), readonly: false }];
        s.qmp = Some("/run/q.sock".into());
        let a = argv(&s);
        assert_eq!(after(&a, "-netdev"), ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]);
        assert_eq!(after(&a, "-nic"), ["user"]);
        assert_eq!(after(&a, "-fsdev"), ["local,id=fs0,path=/r,security_model=none"]);
        assert_eq!(
            after(&a, "-device"),
            ["virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01", "virtio-9p-pci,fsdev=fs0,mount_tag=results"]
        );
        assert_eq!(after(&a, "-qmp"), ["unix:/run/q.sock,server=on,wait=off"]);
        assert!(after(&argv(&spec(Accel::Tcg)), "-netdev").is_empty());
        assert_eq!(after(&a, "-chardev"), ["stdio,id=console,mux=on,signal=off"]);
    }

    #[test]
    fn microvm_has_its_status_port_at_com2_and_virtio_over_mmio() {
        let mut s = spec(Accel::Tcg);
        s.machine = Machine::Microvm;
        s.net = Some(UserNet::default());
        s.shares = vec![Share9p { tag: "results".into(), path: "/r".into(), readonly: true }];
        s.ports = vec![PortToFile { name: "p".into(), path: "/p".into() }];
        let a = argv(&s);
        assert_eq!(after(&a, "-machine"), ["microvm,pit=on,accel=tcg"]);
        assert_eq!(after(&a, "-serial"), ["chardev:console"]);
        assert_eq!(after(&a, "-chardev")[1], "file,id=status,path=/tmp/s.jsonl");
        assert_eq!(after(&a, "-fsdev"), ["local,id=fs0,path=/r,security_model=none,readonly=on"]);
        assert_eq!(
            after(&a, "-device"),
            [
                "isa-serial,chardev=status,iobase=0x2f8,irq=3",
                "virtio-net-device,netdev=net0",
                "virtio-9p-device,fsdev=fs0,mount_tag=results",
                "virtio-serial-device,id=ports",
                "virtserialport,bus=ports.0,chardev=port0,name=p",
            ]
        );
        assert!(!a.iter().any(|w| w.contains("pci")), "{a:?}");
    }

    #[test]
    fn ports_write_to_files() {
        let mut s = spec(Accel::Tcg);
        s.ports = vec![PortToFile { name: "appliance.results".into(), path: "/r,1/.run.cpio".into() }];
        let a = argv(&s);
        assert_eq!(
            after(&a, "-device"),
            ["virtio-serial-pci,id=ports", "virtserialport,bus=ports.0,chardev=port0,name=appliance.results"]
        );
        assert_eq!(after(&a, "-chardev")[1], "file,id=port0,path=/r,,1/.run.cpio");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = argv(&spec(Accel::Kvm));
        assert_eq!(after(&a, "-machine"), ["pc,accel=kvm"]);
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn kvm_needs_both_the_device_and_vmx_or_svm() {
        assert!(cpuinfo_has_virt("processor: 0\nflags\t\t: fpu vme vmx sse\n"));
        assert!(cpuinfo_has_virt("flags : svm lm\n"));
        assert!(!cpuinfo_has_virt("flags : fpu vme sse hypervisor\nvmx flags : ept\n"));
        assert_eq!(accel_from(true, Ok(())).0, Accel::Kvm);
        assert_eq!(accel_from(false, Ok(())).0, Accel::Tcg);
        let (a, why) = accel_from(true, Err("cannot open /dev/kvm: denied".into()));
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("/dev/kvm"));
    }

    #[test]
    fn dry_run_line_quotes_what_needs_it() {
        let line = shell_line(Path::new("/usr/bin/qemu"), &["-append".into(), "a b 'c'".into()]);
        assert_eq!(line, r"/usr/bin/qemu -append 'a b '\''c'\'''");
    }
}
