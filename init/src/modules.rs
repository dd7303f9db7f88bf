//! Kernel modules at boot. The image builder packs modules under
//! `/lib/modules/<release>/` with `appliance.order` (loaded at every boot, dependencies
//! first), `modules.dep` (every packed module with its dependencies) and `modules.builtin`,
//! in the format of [`appliance_cmdline::modules`]; `appModules=` names more modules,
//! resolved here from the image's `modules.dep`, and so do the features a boot uses
//! ([`load_wanted`]: their drivers, when the image packs them).
//!
//! Pure first: [`plan`] turns the lists into the loads to make, as data; [`load`] applies
//! them through a [`Loader`] (the kernel's `finit_module`, or a recorder in tests) and
//! returns what failed. Reporting is the caller's.
//!
//! It does not resolve aliases or soft dependencies, pass module parameters, or decompress
//! (the builder packs modules decompressed).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use appliance_cmdline::modules::{DEP_FILE, DepEntry, MODULES_ROOT, canonical, name_of_path, order_paths, parse_dep};
use rustix::io::Errno;

/// One module to load: its name, its path relative to the modules directory, and the
/// names of the modules loaded for it first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub name: String,
    pub path: String,
    pub deps: Vec<String>,
}

/// A problem found while planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// `appModules` names a module the image does not have.
    NotInImage { name: String },
}

impl core::fmt::Display for Problem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Problem::NotInImage { name } => write!(
                f,
                "appModules: module {name} is not in the image (add it to `modules_available` in \
                 appliance.toml)"
            ),
        }
    }
}

/// What to load, in order, and what could not be planned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub loads: Vec<Load>,
    pub problems: Vec<Problem>,
    /// Requested modules that the kernel has built in: nothing to load.
    pub builtin: Vec<String>,
}

/// The loads for the image's `appliance.order` (`order`), then for each
/// `appModules` name, then for each of `wanted` (the drivers of the features the boot
/// uses, [`appliance_cmdline::modules::FEATURE_MODULES`]), each with its dependencies from
/// `modules.dep` first; each module once. A wanted module the image does not have is no
/// problem: the kernel has it built in, or lacks it and the feature says so.
pub fn plan(
    order: &str,
    requested: &[String],
    wanted: &[&str],
    dep: &BTreeMap<String, DepEntry>,
    builtin: &BTreeSet<String>,
) -> Plan {
    let mut out = Plan::default();
    let mut seen = BTreeSet::new();
    for path in order_paths(order) {
        let Some(name) = name_of_path(path) else { continue };
        if dep.contains_key(&name) {
            // The builder writes the list dependencies first; a list edited by hand still
            // loads in a working order.
            visit(&name, dep, &mut seen, &mut BTreeSet::new(), &mut out.loads);
        } else if seen.insert(name.clone()) {
            out.loads.push(Load { name, path: String::from(path), deps: Vec::new() });
        }
    }
    for name in requested {
        let name = canonical(name);
        if seen.contains(&name) {
            continue;
        }
        if !dep.contains_key(&name) {
            if builtin.contains(&name) {
                out.builtin.push(name);
            } else {
                out.problems.push(Problem::NotInImage { name });
            }
            continue;
        }
        visit(&name, dep, &mut seen, &mut BTreeSet::new(), &mut out.loads);
    }
    for name in wanted {
        visit(&canonical(name), dep, &mut seen, &mut BTreeSet::new(), &mut out.loads);
    }
    out
}

/// Depth first, dependencies before the module; `path` breaks loops (a broken list must
/// not hang PID 1).
fn visit(
    name: &str,
    dep: &BTreeMap<String, DepEntry>,
    seen: &mut BTreeSet<String>,
    path: &mut BTreeSet<String>,
    loads: &mut Vec<Load>,
) {
    if seen.contains(name) || !path.insert(name.to_string()) {
        return;
    }
    let Some(entry) = dep.get(name) else { return };
    // A dependency the image lacks is built in (or the kernel will say what is missing).
    for d in &entry.deps {
        visit(d, dep, seen, path, loads);
    }
    seen.insert(name.to_string());
    loads.push(Load { name: name.to_string(), path: entry.path.clone(), deps: entry.deps.clone() });
}

/// What loads a module file.
pub trait Loader {
    /// Loads the module at `path` (absolute).
    fn load(&mut self, path: &str) -> Result<(), Errno>;
}

/// Loading through the kernel: open the file, `finit_module(2)` it.
pub struct Kernel;

impl Loader for Kernel {
    fn load(&mut self, path: &str) -> Result<(), Errno> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        crate::sys::finit_module(rustix::fd::AsFd::as_fd(&fd))
    }
}

/// A module that did not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The kernel (or opening the file) refused it.
    Refused { name: String, path: String, errno: Errno },
    /// Not tried: a module it depends on failed.
    Skipped { name: String, dependency: String },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Refused { name, path, errno } => {
                write!(f, "cannot load module {name} ({path}): ")?;
                match errno_text(*errno) {
                    Some(text) => write!(f, "{text}"),
                    None => write!(f, "{}", crate::console::Describe(*errno)),
                }
            }
            Failure::Skipped { name, dependency } => {
                write!(f, "module {name} not loaded: its dependency {dependency} failed")
            }
        }
    }
}

/// What an errno of `finit_module` usually means; `None` for the generic text.
fn errno_text(errno: Errno) -> Option<&'static str> {
    Some(match errno {
        Errno::NOENT => "no such file or directory (or the module needs a symbol no loaded module exports)",
        Errno::NOEXEC => "exec format error (not a module for this kernel, or still compressed)",
        Errno::INVAL => "invalid argument (built for another kernel version?)",
        Errno::KEYREJECTED | Errno::NOKEY => "key rejected (module signing is enforced)",
        Errno::PERM => "operation not permitted (module loading is disabled or locked down)",
        _ => return None,
    })
}

/// Loads each module of `loads` from `dir` in order. A module already loaded (`EEXIST`)
/// counts as loaded; a module whose dependency failed is skipped. Returns the failures and
/// the number of modules loaded.
pub fn load(loads: &[Load], dir: &str, loader: &mut impl Loader) -> (Vec<Failure>, usize) {
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    let mut failures = Vec::new();
    let mut loaded = 0;
    for l in loads {
        if let Some(dependency) = l.deps.iter().find(|d| failed.contains(d.as_str())) {
            failures.push(Failure::Skipped { name: l.name.clone(), dependency: dependency.clone() });
            failed.insert(&l.name);
            continue;
        }
        let path = format!("{dir}/{}", l.path);
        match loader.load(&path) {
            Ok(()) | Err(Errno::EXIST) => loaded += 1,
            Err(errno) => {
                failures.push(Failure::Refused { name: l.name.clone(), path, errno });
                failed.insert(&l.name);
            }
        }
    }
    (failures, loaded)
}

/// The image's modules directory for the running kernel: `/lib/modules/<release>`.
pub fn dir() -> String {
    let uname = rustix::system::uname();
    format!("{MODULES_ROOT}/{}", uname.release().to_str().unwrap_or_default())
}

/// Loads `wanted`, the drivers of a feature about to be used, with their dependencies,
/// as far as the image packs them (see [`plan`]); modules already loaded are skipped.
/// Returns what failed.
pub fn load_wanted(wanted: &[&str]) -> Vec<Failure> {
    let dir = dir();
    let Some(dep) = crate::read_to_string(&format!("{dir}/{DEP_FILE}")) else { return Vec::new() };
    let mut plan = plan("", &[], wanted, &parse_dep(&dep), &BTreeSet::new());
    plan.loads.retain(|l| {
        rustix::fs::access(format!("/sys/module/{}", l.name).as_str(), rustix::fs::Access::EXISTS).is_err()
    });
    let (failures, loaded) = load(&plan.loads, &dir, &mut Kernel);
    if loaded > 0 {
        log::info!("{loaded} kernel module(s) loaded for {}", wanted.join(", "));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use appliance_cmdline::modules::{parse_builtin, parse_dep};

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko \
        kernel/drivers/virtio/virtio.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";

    fn names(plan: &Plan) -> Vec<&str> {
        plan.loads.iter().map(|l| l.name.as_str()).collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| String::from(*s)).collect()
    }

    #[test]
    fn requested_modules_come_after_their_dependencies() {
        let dep = parse_dep(DEP);
        let p = plan("", &strings(&["virtio_net"]), &[], &dep, &BTreeSet::new());
        assert_eq!(p.loads.len(), 5);
        // Every module after its dependencies, each once.
        for (i, l) in p.loads.iter().enumerate() {
            for d in &l.deps {
                let at = p.loads.iter().position(|x| &x.name == d).unwrap();
                assert!(at < i, "{d} after {} in {:?}", l.name, names(&p));
            }
        }
        assert_eq!(names(&p).last(), Some(&"virtio_net"));
        assert!(p.problems.is_empty());
    }

    #[test]
    fn order_file_first_then_requests_without_repeats() {
        let dep = parse_dep(DEP);
        let order = "kernel/net/core/failover.ko\nkernel/drivers/net/net_failover.ko\n\n";
        let p = plan(order, &strings(&["virtio-pci", "failover", "virtio_pci"]), &[], &dep, &BTreeSet::new());
        assert_eq!(names(&p), ["failover", "net_failover", "virtio", "virtio_ring", "virtio_pci"]);
        assert_eq!(p.loads[0].path, "kernel/net/core/failover.ko");
    }

    #[test]
    fn unknown_and_builtin_requests() {
        let dep = parse_dep(DEP);
        let builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n");
        let p = plan("", &strings(&["nonexistent", "virtio_blk"]), &[], &dep, &builtin);
        assert!(p.loads.is_empty());
        assert_eq!(p.builtin, ["virtio_blk"]);
        assert_eq!(p.problems, [Problem::NotInImage { name: String::from("nonexistent") }]);
        assert_eq!(
            p.problems[0].to_string(),
            "appModules: module nonexistent is not in the image (add it to `modules_available` in appliance.toml)"
        );
    }

    /// The drivers of a feature: loaded with their dependencies when the image has them,
    /// after what the image and appModules ask for, and no problem when it has not.
    #[test]
    fn wanted_modules_load_when_packed_and_are_skipped_otherwise() {
        let dep = parse_dep(DEP);
        let p = plan(
            "kernel/drivers/virtio/virtio.ko\n",
            &[],
            &["virtio_pci", "virtio-net", "nfsv4"],
            &dep,
            &BTreeSet::new(),
        );
        assert_eq!(names(&p), ["virtio", "virtio_ring", "virtio_pci", "failover", "net_failover", "virtio_net"]);
        assert!(p.problems.is_empty() && p.builtin.is_empty(), "{p:?}");
        assert!(plan("", &[], &["virtio_net"], &BTreeMap::new(), &BTreeSet::new()).loads.is_empty());
    }

    /// A broken modules.dep with a loop must not hang PID 1.
    #[test]
    fn dependency_loops_end() {
        let dep = parse_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let p = plan("", &strings(&["a"]), &[], &dep, &BTreeSet::new());
        assert_eq!(names(&p), ["b", "a"]);
    }

    /// Random dependency graphs (a fixed pseudo-random sequence: the init has no
    /// proptest, whose std dependencies would leak into the no_std build): every module is
    /// planned once, after all its dependencies, whatever the lists say.
    #[test]
    fn random_graphs_plan_dependencies_first() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let count = 1 + next(12);
            let mut text = String::new();
            for m in 0..count {
                text.push_str(&format!("m{m}.ko:"));
                // Only lower-numbered dependencies: a DAG, like depmod's output.
                for d in 0..m {
                    if next(3) == 0 {
                        text.push_str(&format!(" d/m{d}.ko"));
                    }
                }
                text.push('\n');
            }
            let dep = parse_dep(&text);
            let requested: Vec<String> = (0..1 + next(4)).map(|_| format!("m{}", next(count + 2))).collect();
            let order: String = (0..next(3)).map(|_| format!("m{}.ko\n", next(count))).collect();
            let p = plan(&order, &requested, &[], &dep, &BTreeSet::new());
            let names = names(&p);
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(unique.len(), names.len(), "{names:?}");
            for (i, l) in p.loads.iter().enumerate() {
                for d in &l.deps {
                    let at = names.iter().position(|n| n == d);
                    assert!(at.is_some_and(|at| at < i), "{d} of {} at {at:?} in {names:?}\n{text}", l.name);
                }
            }
            for r in &requested {
                let known = dep.contains_key(r);
                assert_eq!(names.contains(&r.as_str()), known, "{r}");
                assert_eq!(p.problems.contains(&Problem::NotInImage { name: r.clone() }), !known, "{r}");
            }
        }
    }

    struct Recorder {
        calls: Vec<String>,
        fail: BTreeMap<&'static str, Errno>,
    }

    impl Loader for Recorder {
        fn load(&mut self, path: &str) -> Result<(), Errno> {
            self.calls.push(String::from(path));
            match self.fail.iter().find(|(name, _)| path.ends_with(*name)) {
                Some((_, e)) => Err(*e),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn loading_in_order_with_eexist_fine_and_failures_reported() {
        let dep = parse_dep(DEP);
        let p = plan("", &strings(&["virtio_net", "virtio_pci"]), &[], &dep, &BTreeSet::new());
        let mut r = Recorder {
            calls: vec![],
            fail: BTreeMap::from([("/virtio.ko", Errno::EXIST), ("/net_failover.ko", Errno::NOEXEC)]),
        };
        let (failures, loaded) = load(&p.loads, "/lib/modules/6.1", &mut r);
        // virtio_net is skipped: net_failover failed.
        assert_eq!(r.calls.len(), p.loads.len() - 1);
        assert!(r.calls.iter().all(|c| c.starts_with("/lib/modules/6.1/kernel/")));
        assert_eq!(loaded, p.loads.len() - 2);
        assert_eq!(
            failures,
            [
                Failure::Refused {
                    name: String::from("net_failover"),
                    path: String::from("/lib/modules/6.1/kernel/drivers/net/net_failover.ko"),
                    errno: Errno::NOEXEC
                },
                Failure::Skipped { name: String::from("virtio_net"), dependency: String::from("net_failover") },
            ]
        );
        assert_eq!(
            failures[0].to_string(),
            "cannot load module net_failover (/lib/modules/6.1/kernel/drivers/net/net_failover.ko): exec format \
             error (not a module for this kernel, or still compressed)"
        );
        assert_eq!(failures[1].to_string(), "module virtio_net not loaded: its dependency net_failover failed");
    }
}
