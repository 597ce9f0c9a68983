//! CLI tests of the built binary: `--help`, and every bad input with its exit
//! status and one-line message. None of them may leave anything behind.
mod common;

use std::{
    fs,
    path::PathBuf,
    process::{Command, Output},
};

use common::{attached_cgdrop_progs, cgroup2_root, TestCgroup, CGDROP};

fn cgdrop(args: &[&str]) -> Output {
    Command::new(CGDROP).args(args).output().expect("run cgdrop")
}

/// Asserts exit status `code` and a single stderr line `cgdrop: …` containing every `needles`.
fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.starts_with("cgdrop: "), "{stderr:?}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr:?}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&out.stdout));
}

/// A cgroup v1 directory of this host, if it has any (hybrid hosts do).
fn cgroup_v1_dir() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup").then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
    })
}

#[test]
fn help_lists_the_options() {
    let out = cgdrop(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--cgroup",
        "--ingress",
        "--egress",
        "--both",
        "--iface",
        "--port",
        "--create",
        "--run",
        "--interval",
        "--json",
        "--verbose",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
    assert!(help.contains("never rejected at once"), "--iface caveat missing from --help");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    assert_error(&cgdrop(&["--block", "1.2.3.4"]), 2, &["--cgroup"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--port", "0"]), 2, &["'0'", "--port"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--port", "65536"]), 2, &["'65536'", "--port"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--port", "nosuchservice"]), 2, &["'nosuchservice'", "--port"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--port", "9-8"]), 2, &["ends before it starts"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--ingress", "--egress"]), 2, &["cannot be used with"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--interval", "0"]), 2, &["--interval"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--frobnicate"]), 2, &["--frobnicate"]);
}

#[test]
fn unknown_interface() {
    assert_error(
        &cgdrop(&["--cgroup", "x", "--iface", "cgdrop-nosuch0"]),
        1,
        &["unknown interface 'cgdrop-nosuch0'", "ip link"],
    );
}

#[test]
fn missing_cgroup_without_create() {
    let name = format!("cgdrop-test-missing-{}", std::process::id());
    assert_error(&cgdrop(&["--cgroup", &name]), 1, &["does not exist", "--create"]);
    assert!(!cgroup2_root().join(&name).exists(), "nothing created");
    let abs = cgroup2_root().join(&name);
    assert_error(&cgdrop(&["--cgroup", abs.to_str().unwrap()]), 1, &["does not exist"]);
    // --create needs an existing parent.
    let nested = format!("{name}/child");
    assert_error(&cgdrop(&["--cgroup", &nested, "--create"]), 1, &["parent", "does not exist"]);
    assert!(!cgroup2_root().join(&name).exists(), "nothing created");
}

#[test]
fn cgroup_v1_directory() {
    let Some(v1) = cgroup_v1_dir() else {
        eprintln!("skipped: this host has no cgroup v1 hierarchy");
        return;
    };
    assert_error(&cgdrop(&["--cgroup", v1.to_str().unwrap()]), 1, &["cgroup v1", "cgroup2 mount"]);
}

#[test]
fn path_that_is_not_a_cgroup() {
    let dir = std::env::temp_dir();
    assert_error(&cgdrop(&["--cgroup", dir.to_str().unwrap()]), 1, &["is not a cgroup v2 directory", "cgroup2 mount"]);
    let procs = cgroup2_root().join("cgroup.procs");
    assert_error(&cgdrop(&["--cgroup", procs.to_str().unwrap()]), 1, &["cgroup file, not a cgroup directory"]);
    assert_error(&cgdrop(&["--cgroup", "../../etc"]), 1, &["'..'"]);
    // --create under something that is not cgroup2 creates nothing.
    let under_tmp = dir.join(format!("cgdrop-test-notcg-{}", std::process::id()));
    assert_error(
        &cgdrop(&["--cgroup", under_tmp.to_str().unwrap(), "--create"]),
        1,
        &["cannot create cgroup", "not a cgroup v2 directory"],
    );
    assert!(!under_tmp.exists());
}

/// Runs cgdrop without any capability: as root, through setpriv with an empty
/// bounding set (the root tests run as root in CI); otherwise as we are.
fn unprivileged(args: &[&str]) -> Output {
    if nix::unistd::geteuid().is_root() {
        Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--", CGDROP])
            .args(args)
            .output()
            .expect("run setpriv (util-linux)")
    } else {
        cgdrop(args)
    }
}

#[test]
fn missing_privileges() {
    let cg = if nix::unistd::geteuid().is_root() { Some(TestCgroup::new("noprivs")) } else { None };
    let path = cg.as_ref().map_or_else(cgroup2_root, |c| c.path.clone());
    let out = unprivileged(&["--cgroup", path.to_str().unwrap()]);
    assert_error(&out, 1, &["missing privileges", "CAP_BPF", "root"]);
    if cg.is_some() {
        assert!(attached_cgdrop_progs(&path).is_empty());
    }
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn non_multi_program_blocks_attach() {
    // A program attached without BPF_F_ALLOW_MULTI (bpftool's default) makes
    // link creation fail with EPERM; cgdrop must say why and leave nothing.
    let cg = TestCgroup::new("exclusive");
    let _foreign = common::ForeignProgram::attach(&cg, "exclusive", false);

    // bpftool attached a program of cgdrop's own object: it is the only one.
    let before = attached_cgdrop_progs(&cg.path);
    assert_eq!(before.len(), 1, "{before:?}");

    let out = cgdrop(&["--cgroup", cg.path.to_str().unwrap(), "--egress"]);
    assert_error(&out, 1, &["attaching cgdrop_egress", "BPF_F_ALLOW_MULTI", "bpftool cgroup show"]);
    assert_eq!(attached_cgdrop_progs(&cg.path), before, "cgdrop left programs attached");
}

#[test]
fn bad_rules_on_the_command_line() {
    assert_error(&cgdrop(&["--cgroup", "x", "--block", "10.0.0.0/33"]), 2, &["'10.0.0.0/33'", "prefix length"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--allow", "1.2.3.4:0"]), 2, &["port '0'"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--allow", "[2001:db8::1:443"]), 2, &["missing its ']'"]);
    assert_error(&cgdrop(&["--cgroup", "x", "--block", "example.com"]), 2, &["not an IPv4 or IPv6 address"]);
    assert_error(
        &cgdrop(&["--cgroup", "x", "--block", "10.0.0.0/8", "--allow", "10.0.0.0/8"]),
        1,
        &["10.0.0.0/8 is both allowed and denied"],
    );
}

/// A rules file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("cgdrop-test-{name}-{}", std::process::id()));
        fs::write(&path, bytes).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn bad_rules_files() {
    let bad_line = TempFile::new("badline", b"# ok so far\ndeny 10.0.0.0/8\nallow 10.1.0.0/16 ttl=5\n");
    assert_error(
        &cgdrop(&["--cgroup", "x", "--rules-file", bad_line.0.to_str().unwrap()]),
        1,
        &["rules file", "line 3", "needs a unit"],
    );
    let garbage = TempFile::new("garbage", &[0xff, 0xfe, 0, 1, 2]);
    assert_error(&cgdrop(&["--cgroup", "x", "--rules-file", garbage.0.to_str().unwrap()]), 1, &["not UTF-8"]);
    let missing = std::env::temp_dir().join("cgdrop-test-no-such-rules-file");
    assert_error(&cgdrop(&["--cgroup", "x", "--rules-file", missing.to_str().unwrap()]), 1, &["reading rules file"]);
    let ttl_overflow = TempFile::new("overflow", b"deny 1.2.3.4 ttl=99999999999999999999d\n");
    assert_error(&cgdrop(&["--cgroup", "x", "--rules-file", ttl_overflow.0.to_str().unwrap()]), 1, &["line 1"]);
}

#[test]
fn alone_it_prints_a_short_usage() {
    let out = cgdrop(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in ["cgdrop run -- CMD", "--cgroup PATH", "cgdrop pin", "cgdrop apply", "cgdrop --help"] {
        assert!(stderr.contains(needle), "{needle:?} missing: {stderr}");
    }
    assert!(stderr.lines().count() <= 10, "short: {stderr}");
}

#[test]
fn mistakes_get_suggestions_and_plain_words() {
    assert_error(&cgdrop(&["stauts"]), 2, &["'stauts'", "'status'"]);
    assert_error(&cgdrop(&["run", "curl", "-x"]), 2, &["put `--` before the command"]);
    assert_error(&cgdrop(&["run", "--frob", "--", "true"]), 2, &["use '-- --frob'"]);
    // No message of Rust's number parsers, no `1..18446744073709551615`.
    for (args, words) in [
        (&["--cgroup", "x", "--interval", "abc"][..], "not a whole number"),
        (&["--cgroup", "x", "--interval", "0"][..], "at least 1"),
        (&["run", "--log-rate", "many", "--", "true"][..], "not a whole number"),
        (&["run", "--keep-fd", "2", "--", "true"][..], "at least 3"),
        (&["pin", "--pid", "abc"][..], "not a whole number"),
        (&["pin", "--pid", "0"][..], "at least 1"),
        (&["--cgroup", "x", "--port", "99999"][..], "from 1 to 65535"),
        (&["--cgroup", "x", "--interval", "99999999999999999999"][..], "too large"),
    ] {
        let out = cgdrop(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_error(&out, 2, &[words]);
        assert!(
            !stderr.contains("invalid digit") && !stderr.contains("..") && !stderr.contains("target type"),
            "{args:?}: {stderr}"
        );
    }
}

/// What bash completes for `cgdrop ARGS… CUR` with the generated script.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = String::from_utf8(cgdrop(&["completions", "bash"]).stdout).unwrap();
    let file = common::TempPath::new("completion.bash");
    fs::write(&*file, script).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cmd = format!(
        "source {}; COMP_WORDS=(cgdrop {}); COMP_CWORD={}; _cgdrop cgdrop '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        words.len(),
        words[words.len() - 1],
        words[words.len() - 2]
    );
    let out = Command::new("bash").args(["-c", &cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).filter(|l| !l.is_empty()).collect()
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn completions_offer_interfaces_and_cgroups_not_files() {
    let ifaces = bash_completes(&["--iface", "l"]);
    assert!(ifaces.contains(&"lo".to_string()), "{ifaces:?}");
    let cg = TestCgroup::new("complete");
    let cgroups = bash_completes(&["pin", "--cgroup", &cg.name[..cg.name.len() - 2]]);
    assert_eq!(cgroups, std::slice::from_ref(&cg.name), "cgroups below the cgroup2 root");
    let users = bash_completes(&["run", "--user", "roo"]);
    assert!(users.contains(&"root".to_string()), "{users:?}");
}
