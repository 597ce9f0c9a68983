//! What a policy aims at, as the user names it (a cgroup path, a `0::/path`
//! line, a process, a systemd unit, a container) and how that becomes one
//! cgroup directory: systemd or the container runtime when they answer, the
//! cgroup tree's naming conventions when they do not.
use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::host::cgroup;

/// A target as given on the command line or in an `apply` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupTarget {
    /// A path (absolute, relative to the cgroup2 root, or `0::/path`).
    Cgroup(PathBuf),
    Pid(u32),
    /// A systemd unit (`nginx.service`, `user@1000.service`, `x.scope`, `y.slice`).
    Unit(String),
    /// A Docker, Podman or containerd/CRI container: full or short id, or name.
    Container(String),
}

/// Also what a pinned policy records as its target (`info.target`).
impl fmt::Display for CgroupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupTarget::Cgroup(p) => write!(f, "cgroup {}", p.display()),
            CgroupTarget::Pid(pid) => write!(f, "pid {pid}"),
            CgroupTarget::Unit(u) => write!(f, "unit {u}"),
            CgroupTarget::Container(c) => write!(f, "container {c}"),
        }
    }
}

/// How deep the tree walks for units and containers go (kubepods nest 4-5 levels).
const MAX_DEPTH: usize = 8;

impl CgroupTarget {
    /// A path `cgroup::locate` takes: absolute, or relative to the cgroup2 root.
    /// Units and containers that have no cgroup now are errors that say so.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            CgroupTarget::Cgroup(p) => Ok(cgroup_arg(p)),
            CgroupTarget::Pid(pid) => of_pid(*pid),
            CgroupTarget::Unit(name) => of_unit(name),
            CgroupTarget::Container(id) => of_container(id),
        }
    }
}

/// `--cgroup`'s argument: the `0::/path` line of /proc/PID/cgroup is taken
/// relative to the cgroup2 root, anything else as `cgroup::resolve` takes it.
pub fn cgroup_arg(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("0::")) {
        Some(rest) => {
            let rest = rest.trim_start_matches('/');
            if rest.is_empty() {
                PathBuf::from(".")
            } else {
                PathBuf::from(rest)
            }
        }
        None => p.to_path_buf(),
    }
}

/// The cgroup of a running process (its cgroup v2 line).
fn of_pid(pid: u32) -> Result<PathBuf> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("no process has pid {pid}: pass the pid of a running process"),
        _ => anyhow!("reading {file}: {e}"),
    })?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("process {pid} is in no cgroup v2 ({file} has no `0::` line): is cgroup2 mounted?"))?;
    if line.ends_with(" (deleted)") {
        bail!("process {pid} is in a removed cgroup ({line}): it is exiting");
    }
    Ok(cgroup_arg(Path::new(&format!("0::{line}"))))
}

/// Checks a unit name the way systemd spells them; adds `.service` to a bare
/// name, as systemctl does.
pub fn unit_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if !ok {
        bail!("'{name}' is not a systemd unit name: pass one like nginx.service, user@1000.service or machine.slice");
    }
    let known = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
    Ok(if known.iter().any(|s| name.ends_with(s)) { name.to_string() } else { format!("{name}.service") })
}

/// A unit's control group: systemd's answer when it runs the unit, else the
/// one directory named after the unit in the cgroup tree.
fn of_unit(name: &str) -> Result<PathBuf> {
    let unit = unit_name(name)?;
    if let Some(cg) = systemctl_control_group(&unit) {
        return Ok(cgroup_arg(Path::new(&format!("0::{cg}"))));
    }
    let root = cgroup::cgroup2_root()?;
    let found = find_dirs(&root, |n| n == unit);
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "unit {unit} has no control group (systemd does not run it, and no {unit} directory is under {}): start it, or check the name with `systemctl status {unit}`",
            root.display()
        ),
        many => bail!("unit {unit} matches several cgroups: {}; pass --cgroup with one of them", list(many, &root)),
    }
}

fn systemctl_control_group(unit: &str) -> Option<String> {
    let out = Command::new("systemctl").args(["show", "-P", "ControlGroup", "--", unit]).output().ok()?;
    let cg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && cg.starts_with('/')).then_some(cg)
}

/// The directory names runtimes give a container's cgroup (systemd driver,
/// then cgroupfs driver, where the directory is the bare id under a
/// runtime-named parent). Returns the id.
fn container_id_of(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for prefix in ["docker-", "libpod-", "cri-containerd-", "crio-", "containerd-"] {
        if let Some(id) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(".scope")) {
            if hex64(id) {
                return Some(id.to_string());
            }
        }
    }
    // cgroupfs driver: /docker/<id>, /libpod_parent/libpod-<id>, /kubepods/…/<id>.
    let parent = dir.parent()?.file_name()?.to_str()?;
    let id = name.strip_prefix("libpod-").unwrap_or(name);
    let runtime_parent = ["docker", "libpod_parent", "containerd", "crio"].contains(&parent)
        || parent.starts_with("pod")
        || parent.starts_with("kubepods");
    (hex64(id) && runtime_parent).then(|| id.to_string())
}

/// A container's cgroup: the runtime CLI turns a name or short id into the
/// full id where it is installed and answers; the tree's naming finds the id.
fn of_container(given: &str) -> Result<PathBuf> {
    if given.is_empty() || given.contains('/') {
        bail!("'{given}' is not a container id or name: pass one as `docker ps` shows it");
    }
    let root = cgroup::cgroup2_root()?;
    let runtime_ids: Vec<String> = runtime_ids(given);
    let wanted = given.to_ascii_lowercase();
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    walk(&root, 0, &mut |dir| {
        if let Some(id) = container_id_of(dir) {
            let by_runtime = runtime_ids.contains(&id);
            if by_runtime || id.starts_with(&wanted) {
                found.push((id, dir.to_path_buf()));
            }
        }
    });
    // A runtime's exact answer wins over prefix matches of the id.
    if found.iter().any(|(id, _)| runtime_ids.contains(id)) {
        found.retain(|(id, _)| runtime_ids.contains(id));
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    match found.as_slice() {
        [(_, dir)] => Ok(dir.clone()),
        [] => {
            let how = if runtime_ids.is_empty() && which_runtime().is_none() {
                " (no docker or podman command here to resolve names: pass the container id)"
            } else {
                ""
            };
            bail!("no running container matches '{given}'{how}: `docker ps` lists them")
        }
        many => {
            let ids: Vec<String> = many.iter().map(|(id, _)| id[..12].to_string()).collect();
            bail!("'{given}' matches several containers: {}; pass more of the id", ids.join(", "))
        }
    }
}

fn which_runtime() -> Option<&'static str> {
    ["docker", "podman"].into_iter().find(|cmd| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(cmd).is_file()))
    })
}

/// Full ids the installed runtimes give for `given` (a name or an id prefix).
fn runtime_ids(given: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for cmd in ["docker", "podman"] {
        let Ok(out) = Command::new(cmd)
            .args(["inspect", "--type", "container", "--format", "{{.Id}}", "--", given])
            .stderr(std::process::Stdio::null())
            .output()
        else {
            continue;
        };
        if out.status.success() {
            ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()));
        }
    }
    ids
}

/// Every directory below `root` (to MAX_DEPTH) whose name satisfies `pred`.
fn find_dirs(root: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(root, 0, &mut |dir| {
        if dir.file_name().and_then(|n| n.to_str()).is_some_and(&pred) {
            found.push(dir.to_path_buf());
        }
    });
    found.sort();
    found
}

fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let path = e.path();
            visit(&path);
            walk(&path, depth + 1, visit);
        }
    }
}

fn list(paths: &[PathBuf], root: &Path) -> String {
    paths.iter().map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines_are_relative_to_the_root() {
        assert_eq!(cgroup_arg(Path::new("0::/system.slice/a.service")), PathBuf::from("system.slice/a.service"));
        assert_eq!(cgroup_arg(Path::new("0::/")), PathBuf::from("."));
        assert_eq!(cgroup_arg(Path::new("myapp")), PathBuf::from("myapp"));
        assert_eq!(cgroup_arg(Path::new("/sys/fs/cgroup/x")), PathBuf::from("/sys/fs/cgroup/x"));
    }

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("nginx").unwrap(), "nginx.service");
        assert_eq!(unit_name("user@1000.service").unwrap(), "user@1000.service");
        assert_eq!(unit_name("machine.slice").unwrap(), "machine.slice");
        assert!(unit_name("../etc").is_err());
        assert!(unit_name("a/b.service").is_err());
    }

    #[test]
    fn container_directory_names() {
        let id = "a".repeat(64);
        for dir in [
            format!("/cg/system.slice/docker-{id}.scope"),
            format!("/cg/machine.slice/libpod-{id}.scope"),
            format!("/cg/kubepods.slice/x/cri-containerd-{id}.scope"),
            format!("/cg/docker/{id}"),
            format!("/cg/libpod_parent/libpod-{id}"),
        ] {
            assert_eq!(container_id_of(Path::new(&dir)).as_deref(), Some(id.as_str()), "{dir}");
        }
        assert_eq!(container_id_of(Path::new(&format!("/cg/machine.slice/libpod-conmon-{id}.scope"))), None);
        assert_eq!(container_id_of(Path::new(&format!("/cg/other/{id}"))), None);
        assert_eq!(container_id_of(Path::new("/cg/docker/short")), None);
    }
}
