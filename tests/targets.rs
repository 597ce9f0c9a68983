//! Targets as root, with real traffic: `--pid`, `0::/path`, `--unit` and
//! `--container` reach the cgroup they name (laid out as systemd and the
//! container runtimes lay them out), and ambiguous or unknown ones are refused.
mod common;

use std::{fs, path::Path, process::Command};

use common::{Probe, TestCgroup, Unpin, CGDROP};
use serde_json::Value;

fn cgdrop(args: &[&str]) -> std::process::Output {
    Command::new(CGDROP).args(args).output().expect("run cgdrop")
}

/// Runs cgdrop and asserts success; returns stderr (cgdrop's messages).
fn ok(args: &[&str]) -> String {
    let out = cgdrop(args);
    assert!(out.status.success(), "cgdrop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs cgdrop, asserts exit 1 and a one-line error; returns it.
fn refused(args: &[&str]) -> String {
    let out = cgdrop(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "cgdrop {args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// A cgroup below a test cgroup (removed with it).
fn sub(parent: &TestCgroup, rel: &str) -> TestCgroup {
    let path = parent.path.join(rel);
    fs::create_dir_all(&path).unwrap();
    TestCgroup { path, name: rel.to_string() }
}

fn connect(cg: &TestCgroup, port: &str) -> String {
    Probe::run(Some(cg), &["tcp-connect", "127.0.0.1", port, "1"])["result"].as_str().unwrap().to_string()
}

fn status_of(path: &Path) -> Value {
    let out = cgdrop(&["status", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter().find(|s| s["cgroup"] == path.to_str().unwrap()).expect("the policy in status")
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn pid_and_proc_cgroup_lines_name_the_process_cgroup() {
    let cg = TestCgroup::new("pid");
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    common::in_cgroup(&mut sleeper, &cg.path);
    let mut sleeper = sleeper.spawn().unwrap();
    let pid = sleeper.id().to_string();
    let _unpin = Unpin(cg.path.to_str().unwrap().to_string());

    let said = ok(&["pin", "--pid", &pid, "--block", "127.0.0.0/8"]);
    assert!(said.contains(&format!("pid {pid}")) && said.contains(cg.path.to_str().unwrap()), "{said}");
    assert_eq!(connect(&cg, &port), "EPERM");
    let st = status_of(&cg.path);
    assert_eq!(st["target"], format!("pid {pid}"), "{st}");
    ok(&["unpin", "--pid", &pid]);
    assert_eq!(connect(&cg, &port), "ok");

    // The `0::/path` line of /proc/PID/cgroup, pasted as it is.
    let line = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = line.lines().find(|l| l.starts_with("0::")).unwrap().to_string();
    ok(&["pin", "--cgroup", &line, "--block", "127.0.0.0/8"]);
    assert_eq!(connect(&cg, &port), "EPERM");
    ok(&["unpin", "--cgroup", &line]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let err = refused(&["pin", "--pid", &pid]);
    assert!(err.contains(&format!("no process has pid {pid}")), "{err}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn units_are_found_as_systemd_lays_them_out() {
    let me = std::process::id();
    let slice = TestCgroup::new("units");
    let unit = format!("cgdrop-test-web-{me}.service");
    let service = sub(&slice, &format!("cgdrop-test-app-{me}.slice/{unit}"));
    let neighbour = sub(&slice, &format!("cgdrop-test-app-{me}.slice/cgdrop-test-db-{me}.service"));
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let _unpin = Unpin(service.path.to_str().unwrap().to_string());

    let said = ok(&["pin", "--unit", &unit, "--block", "127.0.0.0/8"]);
    assert!(said.contains(&format!("unit {unit}")), "{said}");
    assert_eq!(connect(&service, &port), "EPERM", "the unit's processes are fenced");
    assert_eq!(connect(&neighbour, &port), "ok", "its neighbour is not");
    assert_eq!(status_of(&service.path)["target"], format!("unit {unit}"));
    let list = cgdrop(&["rule", "list", "--unit", &unit, "--json"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    ok(&["unpin", "--unit", &unit]);
    assert_eq!(connect(&service, &port), "ok");
    // A stopped unit (its cgroup removed) is still unpinned by its name.
    ok(&["pin", "--unit", &unit]);
    fs::remove_dir(&service.path).unwrap();
    let said = ok(&["unpin", "--unit", &unit]);
    assert!(said.contains("unpinned"), "{said}");

    // The same unit name in two slices: ambiguous, both listed.
    let dup = format!("cgdrop-test-dup-{me}.service");
    let _a = sub(&slice, &format!("a.slice/{dup}"));
    let _b = sub(&slice, &format!("b.slice/{dup}"));
    let err = refused(&["pin", "--unit", &dup]);
    assert!(err.contains("several") && err.contains("a.slice") && err.contains("b.slice"), "{err}");
    let err = refused(&["pin", "--unit", &format!("cgdrop-test-none-{me}")]);
    assert!(err.contains(&format!("unit cgdrop-test-none-{me}.service has no control group")), "{err}");
    let err = refused(&["pin", "--unit", "../etc"]);
    assert!(err.contains("not a systemd unit name"), "{err}");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn containers_are_found_by_id_as_runtimes_lay_them_out() {
    let tree = TestCgroup::new("containers");
    // Ids that are unique to this test run, sharing a prefix.
    let base = format!("{:08x}", std::process::id());
    let id1 = format!("{base}1{}", "a".repeat(55));
    let id2 = format!("{base}2{}", "b".repeat(55));
    let systemd_driver = sub(&tree, &format!("system.slice/docker-{id1}.scope"));
    let cgroupfs_driver = sub(&tree, &format!("docker/{id2}"));
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");

    for (id, cg) in [(&id1, &systemd_driver), (&id2, &cgroupfs_driver)] {
        let short = &id[..12];
        let _unpin = Unpin(cg.path.to_str().unwrap().to_string());
        let said = ok(&["pin", "--container", short, "--block", "127.0.0.0/8"]);
        assert!(said.contains(cg.path.to_str().unwrap()), "{said}");
        assert_eq!(connect(cg, &port), "EPERM", "{}", cg.path.display());
        assert_eq!(status_of(&cg.path)["target"], format!("container {short}"));
        ok(&["unpin", "--container", id]);
        assert_eq!(connect(cg, &port), "ok");
    }
    let err = refused(&["pin", "--container", &base]);
    assert!(err.contains("several containers") && err.contains(&id1[..12]) && err.contains(&id2[..12]), "{err}");
    let err = refused(&["pin", "--container", &format!("{base}9")]);
    assert!(err.contains("no running container matches"), "{err}");
}

/// Detaches what a test attached with bpftool, and removes the drop-in and
/// its pins, also when the test fails.
struct DropIn {
    unit: String,
    dir: common::TempPath,
    attached: Vec<(String, String, String)>,
}

impl Drop for DropIn {
    fn drop(&mut self) {
        for (cg, kind, prog) in &self.attached {
            let _ = Command::new("bpftool").args(["cgroup", "detach", cg, kind, "pinned", prog]).output();
        }
        let _ = cgdrop(&["systemd", "--unit", &self.unit, "--dir", self.dir.to_str().unwrap(), "--remove"]);
        let _ = fs::remove_dir_all(&*self.dir);
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn systemd_drop_in_programs_attach_as_systemd_would() {
    let cg = TestCgroup::new("dropin");
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "20");
    let unit = format!("cgdrop-test-web-{}.service", std::process::id());
    let mut d = DropIn { unit: unit.clone(), dir: common::TempPath::new("dropins"), attached: Vec::new() };
    let dir = d.dir.to_str().unwrap().to_string();
    let said = ok(&["systemd", "--unit", &unit, "--dir", &dir, "--block", "127.0.0.0/8"]);
    assert!(said.contains("BPFProgram="), "{said}");
    let file = d.dir.join(format!("{unit}.d/cgdrop.conf"));
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("\n[Service]\n"), "{text}");
    let lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("BPFProgram="))
        .map(|l| {
            let (kind, path) = l.split_once(':').unwrap();
            (kind.to_string(), path.to_string())
        })
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ingress", "egress", "connect4", "connect6", "sendmsg4", "sendmsg6", "sock_create"]);
    // systemd attaches each pinned program with BPF_F_ALLOW_MULTI; so does bpftool here.
    for (kind, path) in &lines {
        let out = Command::new("bpftool")
            .args(["cgroup", "attach", cg.path.to_str().unwrap(), kind, "pinned", path, "multi"])
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool attach {kind} {path}: {}", String::from_utf8_lossy(&out.stderr));
        d.attached.push((cg.path.to_str().unwrap().into(), kind.clone(), path.clone()));
    }
    assert_eq!(connect(&cg, &port), "EPERM", "the unit's programs drop");
    let err = refused(&["systemd", "--unit", &unit, "--dir", &dir]);
    assert!(err.contains("already has a cgdrop drop-in"), "{err}");
    ok(&["systemd", "--unit", &unit, "--dir", &dir, "--remove"]);
    assert!(!file.exists(), "the drop-in is removed");
    assert!(lines.iter().all(|(_, p)| !Path::new(p).exists()), "and the pins");
    let err = refused(&["systemd", "--unit", "x.scope"]);
    assert!(err.contains("is a scope"), "{err}");
}

/// Runs docker; Ok(stdout) when it succeeds.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Removes the test's container and image, also when the test fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn a_real_docker_container_by_name() {
    // Needs a running Docker engine and a static busybox to build a tiny
    // image offline; where either is missing it says so and passes.
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        eprintln!("skipped: no Docker engine answers here ({})", e.lines().next().unwrap_or(""));
        return;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        eprintln!("skipped: no /bin/busybox to build a test image from (apt-get install busybox-static)");
        return;
    }
    let name = format!("cgdrop-test-ctr-{}", std::process::id());
    let _cleanup = Container(name.clone());
    let root = common::TempPath::new("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for tool in ["sh", "sleep", "nc"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C {} -c . | docker import - {name}", root.display()))
        .output()
        .unwrap();
    assert!(tar.status.success(), "docker import: {}", String::from_utf8_lossy(&tar.stderr));
    // Host networking: the container reaches the test's server on loopback.
    docker(&["run", "-d", "--network", "host", "--name", &name, &name, "/bin/sleep", "60"]).unwrap();
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "30");
    let reach = || docker(&["exec", &name, "/bin/sh", "-c", &format!("echo x | nc -w 1 127.0.0.1 {port}")]).is_ok();
    assert!(reach(), "the container reaches the server before the policy");
    let id = docker(&["inspect", "--format", "{{.Id}}", &name]).unwrap();
    let said = ok(&["pin", "--container", &name, "--block", "127.0.0.0/8"]);
    assert!(said.contains(&id), "the container's cgroup is named after its id: {said}");
    let _unpin = Unpin(said.split_whitespace().find(|w| w.contains(&id)).unwrap_or_default().to_string());
    assert!(!reach(), "the container is fenced by name");
    ok(&["unpin", "--container", &id[..12]]);
    assert!(reach(), "and free again");
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn port_ranges_and_service_names_drop_exactly_their_ports() {
    // Nothing listens on these ports: a connect the policy allows is refused
    // by the kernel (ECONNREFUSED), one it drops is rejected (EPERM).
    let cg = TestCgroup::new("ports");
    let path = cg.path.to_str().unwrap().to_string();
    let _unpin = Unpin(path.clone());
    let base = 41000 + (std::process::id() % 1000) as u16 * 8;
    let to = |port: u16| Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &port.to_string(), "1"])["result"].clone();
    let range = format!("127.0.0.1:{}-{}", base + 1, base + 3);
    ok(&["pin", "--cgroup", &path, "--block", &range, "--block", "127.0.0.2:domain"]);
    for port in base..=base + 4 {
        let want = if (base + 1..=base + 3).contains(&port) { "EPERM" } else { "ECONNREFUSED" };
        assert_eq!(to(port), want, "port {port} with --block {range}");
    }
    let dns = |port: &str| Probe::run(Some(&cg), &["tcp-connect", "127.0.0.2", port, "1"])["result"].clone();
    assert_eq!((dns("53"), dns("54")), ("EPERM".into(), "ECONNREFUSED".into()), "domain is port 53 only");
    // `rule list` shows the range as it was written, one line.
    let list = cgdrop(&["rule", "list", "--cgroup", &path]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(&format!("deny 127.0.0.1/32:{}-{} ", base + 1, base + 3)), "{list}");
    // `rule del` of the range removes every port of it.
    ok(&["rule", "del", "--cgroup", &path, &range]);
    assert_eq!(to(base + 2), "ECONNREFUSED");
    ok(&["unpin", "--cgroup", &path]);

    // --port with a range: everything on those ports, nothing else.
    ok(&["pin", "--cgroup", &path, "--port", &format!("{}-{}", base + 1, base + 2)]);
    assert_eq!(
        (to(base), to(base + 1), to(base + 2), to(base + 3)),
        ("ECONNREFUSED".into(), "EPERM".into(), "EPERM".into(), "ECONNREFUSED".into())
    );
    ok(&["unpin", "--cgroup", &path]);
    let out = cgdrop(&["pin", "--cgroup", &path, "--block", "2001:db8::1:443"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("ambiguous: write [2001:db8::1]:443"), "{err}");
}
