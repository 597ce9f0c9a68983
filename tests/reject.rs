//! How a rejection looks, and serving without being reached, as root with
//! real traffic: each `--reject-with` gives the client the error it
//! promises; with `--no-new-inbound` a new connection to the cgroup's server
//! is dropped while the server's own outgoing connection, and a connection
//! it already had, keep working.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Probe, TestCgroup, Unpin, CGDROP};

fn cgdrop(args: &[&str]) -> std::process::Output {
    Command::new(CGDROP).args(args).output().expect("run cgdrop")
}

fn ok(args: &[&str]) {
    let out = cgdrop(args);
    assert!(out.status.success(), "cgdrop {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn each_reject_with_gives_the_error_it_promises() {
    let cg = TestCgroup::new("reject");
    let path = cg.path.to_str().unwrap().to_string();
    let _unpin = Unpin(path.clone());
    let (_server, port) = Probe::listen(None, "tcp-serve", "127.0.0.1", "30");
    for (choice, tcp, udp) in [
        ("eperm", "EPERM", "EPERM"),
        ("refused", "ECONNREFUSED", "ECONNREFUSED"),
        ("reset", "ECONNRESET", "ECONNRESET"),
    ] {
        let pin = ["pin", "--cgroup", &path, "--block", "127.0.0.1", "--reject-with", choice];
        if choice == "eperm" {
            ok(&pin);
        } else {
            ok(&[&pin[..], &["--replace"]].concat());
        }
        let r = Probe::run(Some(&cg), &["tcp-connect", "127.0.0.1", &port, "2"]);
        assert_eq!(r["result"], tcp, "--reject-with {choice}: connect {r}");
        let r = Probe::run(Some(&cg), &["udp-send", "127.0.0.1", "9", "1", "10"]);
        assert_eq!(r["errors"][udp], 1, "--reject-with {choice}: sendto {r}");
    }
    let out = cgdrop(&["pin", "--cgroup", &path, "--replace", "--reject-with", "maybe"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An echo server in the cgroup that, on a line `out PORT`, connects to
/// 127.0.0.1:PORT itself and reports the result.
const SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
def serve(c):
    for line in c.makefile():
        if line.startswith("out "):
            try:
                socket.create_connection(("127.0.0.1", int(line.split()[1])), 2).close()
                c.sendall(b"out ok\n")
            except OSError as e:
                c.sendall(("out " + type(e).__name__ + "\n").encode())
        else:
            c.sendall(line.encode())
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
#[ignore = "needs root: `make test` runs it as root"]
fn no_new_inbound_refuses_new_connections_only() {
    let cg = TestCgroup::new("inbound");
    let path = cg.path.to_str().unwrap().to_string();
    let _unpin = Unpin(path.clone());
    let (_elsewhere, other) = Probe::listen(None, "tcp-serve", "127.0.0.1", "30");
    let mut server = Command::new("python3");
    server.args(["-c", SERVER]).stdout(Stdio::piped()).stderr(Stdio::null());
    common::in_cgroup(&mut server, &cg.path);
    let mut server = server.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let port = first.trim().to_string();
    let echo = |conn: &mut TcpStream, line: &str| -> String {
        conn.write_all(line.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut before = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    before.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(echo(&mut before, "hello\n"), "hello\n");

    ok(&["pin", "--cgroup", &path, "--no-new-inbound"]);
    let r = Probe::run(None, &["tcp-connect", "127.0.0.1", &port, "1"]);
    assert_eq!(r["result"], "timeout", "a new connection to the cgroup's server is dropped: {r}");
    assert_eq!(echo(&mut before, "still\n"), "still\n", "the connection it had keeps working");
    assert_eq!(echo(&mut before, &format!("out {other}\n")), "out ok\n", "its own outgoing connection works");
    let status = cgdrop(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&path));
    let _ = server.kill();
    let _ = server.wait();
}
