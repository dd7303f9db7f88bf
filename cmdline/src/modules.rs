//! The module index of an image: how the host's image builder lays out the kernel modules
//! it packs, and how the init reads them back at boot. Under `/lib/modules/<release>/`
//! ([`MODULES_ROOT`]) the image holds the module files, decompressed (the init cannot
//! decompress: [`packed_path`]), and three lists, whose paths are relative to that directory:
//!
//! - `appliance.order` ([`ORDER_FILE`]): the modules loaded at every boot, one path a line,
//!   dependencies first ([`render_order`], [`order_paths`]);
//! - `modules.dep` ([`DEP_FILE`]): every packed module with all its dependencies, in the
//!   kernel's format, `path: dependency-path ...` a line, dependencies listed so that loading
//!   them from the last to the first works, as `modprobe` does ([`dep_line`], [`parse_dep`]);
//!   `appModules` is resolved from it;
//! - `modules.builtin` ([`BUILTIN_FILE`]), the kernel's own list, copied when the kernel has
//!   one, so that the init can tell a built-in driver from a missing one ([`parse_builtin`]).
//!
//! The drivers the features of `appliance run` need in the guest are named here too
//! ([`FEATURE_MODULES`]): on a kernel that has them as modules, the builder packs them in
//! every image, loaded only by a boot that uses the feature.
//!
//! It does not read or write files, resolve dependencies (the builder resolves them in the
//! kernel's tree, the init plans its loads from `modules.dep`) or know of aliases
//! (`modalias`, `softdep`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

/// Where the image keeps its modules; `<release>` below it.
pub const MODULES_ROOT: &str = "/lib/modules";
/// The list of modules loaded at every boot.
pub const ORDER_FILE: &str = "appliance.order";
/// The dependency list, in the kernel's and the image's modules directory.
pub const DEP_FILE: &str = "modules.dep";
/// The kernel's list of built-in modules.
pub const BUILTIN_FILE: &str = "modules.builtin";

/// The network: the driver of the virtio NIC `appliance run` gives the guest (for
/// `--ssh`, `appIp`, and NFS results).
pub const NIC_MODULES: &[&str] = &["virtio_pci", "virtio_net"];
/// NFS results: the NFSv4 client (the `nfs` module asks for it by name, through a
/// `modprobe` the image does not have).
pub const NFS_MODULES: &[&str] = &["nfsv4"];
/// Results over a virtio-serial port (`appResultsTo=serial:NAME`).
pub const PORT_MODULES: &[&str] = &["virtio_pci", "virtio_console"];
/// Results over virtio 9p.
pub const NINEP_MODULES: &[&str] = &["9pnet_virtio", "9p"];
/// Every feature's drivers: on a kernel that has them as modules (Debian's), the builder
/// packs those the kernel has in every image, without the manifest naming them, and the
/// init loads only those of the features a boot uses. The power button needs none:
/// without `button` and `evdev`, a stop comes as Ctrl-Alt-Del, which the PC keyboard
/// built into such kernels delivers.
pub const FEATURE_MODULES: [&[&str]; 4] = [NIC_MODULES, NFS_MODULES, PORT_MODULES, NINEP_MODULES];

/// Module file suffixes a kernel's tree and lists may name, uncompressed first.
pub const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// The kernel's name of a module: `-` and `_` are the same to it; `_` is canonical.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The canonical module name of a module path (`kernel/drivers/net/virtio_net.ko.xz` →
/// `virtio_net`); `None` when it is not a module file.
pub fn name_of_path(path: &str) -> Option<String> {
    let file = path.trim().rsplit('/').next()?;
    SUFFIXES.iter().find_map(|suffix| file.strip_suffix(suffix)).filter(|n| !n.is_empty()).map(canonical)
}

/// The path a module file has in the image: `path` with a compressed suffix replaced by
/// `.ko`, since modules are packed decompressed.
pub fn packed_path(path: &str) -> String {
    for suffix in SUFFIXES.iter().skip(1) {
        if let Some(stem) = path.strip_suffix(suffix) {
            let mut out = String::from(stem);
            out.push_str(".ko");
            return out;
        }
    }
    String::from(path)
}

/// One line of `modules.dep`: the module's path and its dependencies' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepEntry {
    pub path: String,
    pub deps: Vec<String>,
}

/// Parses `modules.dep` into name → entry. Lines that are not of the form
/// `path: dependency-path ...` are skipped, and so are dependencies that are not module
/// paths.
pub fn parse_dep(text: &str) -> BTreeMap<String, DepEntry> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let name = name_of_path(module)?;
            let deps = deps.split_whitespace().filter_map(name_of_path).collect();
            Some((name, DepEntry { path: String::from(module.trim()), deps }))
        })
        .collect()
}

/// The `modules.dep` line of the module at `path` with the dependencies at `deps`, in the
/// order given, newline included.
pub fn dep_line<S: AsRef<str>>(path: &str, deps: &[S]) -> String {
    let mut out = String::from(path);
    out.push(':');
    for dep in deps {
        out.push(' ');
        out.push_str(dep.as_ref());
    }
    out.push('\n');
    out
}

/// The names in a `modules.builtin` (one path a line).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(name_of_path).collect()
}

/// `appliance.order` for the modules at `paths`, in the order given: one path a line.
pub fn render_order<S: AsRef<str>>(paths: &[S]) -> String {
    let mut out = String::new();
    for path in paths {
        out.push_str(path.as_ref());
        out.push('\n');
    }
    out
}

/// The paths in an `appliance.order`, trimmed, without empty lines. A line that is not a
/// module path is kept: [`name_of_path`] tells.
pub fn order_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko \
        kernel/drivers/virtio/virtio.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";

    #[test]
    fn module_names_of_paths() {
        let table = [
            ("kernel/drivers/net/virtio_net.ko", Some("virtio_net")),
            ("kernel/fs/9p/9p.ko.xz", Some("9p")),
            ("a/virtio-rng.ko.zst", Some("virtio_rng")),
            (" x.ko.gz ", Some("x")),
            ("kernel/readme.txt", None),
            ("x.ko.bz2", None),
            (".ko", None),
            ("", None),
        ];
        for (path, want) in table {
            assert_eq!(name_of_path(path).as_deref(), want, "{path}");
        }
        assert_eq!(canonical("virtio-pci"), "virtio_pci");
    }

    #[test]
    fn packed_paths_are_decompressed_names() {
        let table = [
            ("kernel/a.ko", "kernel/a.ko"),
            ("kernel/a.ko.xz", "kernel/a.ko"),
            ("kernel/a.ko.zst", "kernel/a.ko"),
            ("kernel/a.ko.gz", "kernel/a.ko"),
            ("kernel/a.ko.bz2", "kernel/a.ko.bz2"),
        ];
        for (path, want) in table {
            assert_eq!(packed_path(path), want, "{path}");
        }
    }

    #[test]
    fn dep_file_parses_and_skips_junk() {
        let dep = parse_dep(&format!("{DEP}# comment\nnot a line\n:\ngarbage\n"));
        assert_eq!(dep.len(), 6);
        assert_eq!(dep["virtio_net"].deps, ["virtio_ring", "virtio", "net_failover", "failover"]);
        assert_eq!(dep["virtio_net"].path, "kernel/drivers/net/virtio_net.ko");
        assert!(dep["failover"].deps.is_empty());
        let dep = parse_dep("kernel/a.ko: kernel/c.ko.xz kernel/b.ko README\nkernel/b.ko:\nkernel/c.ko.xz:\n");
        assert_eq!(dep["a"].deps, ["c", "b"]);
        assert_eq!(dep["c"].path, "kernel/c.ko.xz");
    }

    #[test]
    fn dep_lines_in_the_kernel_format() {
        assert_eq!(dep_line("a.ko", &["c.ko", "b.ko"]), "a.ko: c.ko b.ko\n");
        assert_eq!(dep_line::<&str>("kernel/b.ko", &[]), "kernel/b.ko:\n");
    }

    #[test]
    fn builtin_and_order_lists() {
        let builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\nkernel/fs/ext4/ext4.ko\n\n");
        assert_eq!(builtin.into_iter().collect::<Vec<_>>(), ["ext4", "virtio_blk"]);
        let order = render_order(&["kernel/a.ko", "kernel/b.ko"]);
        assert_eq!(order, "kernel/a.ko\nkernel/b.ko\n");
        assert_eq!(order_paths(&order).collect::<Vec<_>>(), ["kernel/a.ko", "kernel/b.ko"]);
        assert_eq!(order_paths(" a.ko \n\n\tb.ko\r\n").collect::<Vec<_>>(), ["a.ko", "b.ko"]);
        assert_eq!(render_order::<&str>(&[]), "");
    }

    fn module_path() -> impl Strategy<Value = String> {
        ("([a-z0-9]{1,6}/){0,3}", "[a-z0-9][a-z0-9_-]{0,10}", prop::sample::select(SUFFIXES.to_vec()))
            .prop_map(|(dir, name, suffix)| format!("{dir}{name}{suffix}"))
    }

    proptest! {
        #[test]
        fn dep_lines_parse_back(modules in prop::collection::vec((module_path(), prop::collection::vec(module_path(), 0..5)), 0..8)) {
            let text: String = modules.iter().map(|(path, deps)| dep_line(path, deps)).collect();
            let parsed = parse_dep(&text);
            // The last line of a name wins, as in a map.
            let want: BTreeMap<String, DepEntry> = modules
                .iter()
                .map(|(path, deps)| {
                    let deps = deps.iter().filter_map(|d| name_of_path(d)).collect();
                    (name_of_path(path).unwrap(), DepEntry { path: path.clone(), deps })
                })
                .collect();
            prop_assert_eq!(parsed, want);
        }

        #[test]
        fn order_lists_parse_back(paths in prop::collection::vec(module_path(), 0..8)) {
            let text = render_order(&paths);
            prop_assert_eq!(order_paths(&text).collect::<Vec<_>>(), paths.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn lists_never_panic(text in "(\\PC|[:\n /.-]|\\.ko){0,200}") {
            let _ = parse_dep(&text);
            let _ = parse_builtin(&text);
            let _ = order_paths(&text).count();
            let _ = packed_path(&text);
        }
    }
}
