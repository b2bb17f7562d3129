//! `trace-inject POD_INIT_CONFIG`: connects to the gVisor monitoring socket
//! named in a runsc `--pod-init-config` file, answers nothing but the
//! handshake, and sends malformed packets. The runsc tests run it from a
//! wrapper around runsc, so it is a descendant of the shim (an admitted
//! peer) and its packets reach the parser.

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(config) = args.next() else {
        eprintln!("usage: trace-inject POD_INIT_CONFIG");
        std::process::exit(2);
    };
    let body = std::fs::read(&config).unwrap_or_else(|e| fail(&format!("{config}: {e}")));
    let json: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| fail(&format!("{config}: {e}")));
    let endpoint = json
        .pointer("/trace_session/sinks/0/config/endpoint")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| fail(&format!("{config}: no sink endpoint")))
        .to_string();
    let packets: [&[u8]; 3] = [
        &[0x08, 0x01],                               // handshake, version 1
        &[0x60, 0xea, 0x01, 0, 0, 0, 0, 0],          // header size 60000
        &[8, 0, 1, 0, 0, 0, 0, 0, 0x0a, 0xff, 0xff], // start, broken protobuf
    ];
    // SAFETY: plain socket calls on a descriptor owned here.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail("socket");
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        if endpoint.len() >= addr.sun_path.len() {
            fail(&format!("{endpoint}: too long"));
        }
        for (i, b) in endpoint.bytes().enumerate() {
            addr.sun_path[i] = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + endpoint.len() + 1;
        let r = libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len as u32);
        if r != 0 {
            fail(&format!(
                "connect {endpoint}: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::send(fd, packets[0].as_ptr().cast(), packets[0].len(), 0);
        let mut answer = [0u8; 16];
        let n = libc::recv(fd, answer.as_mut_ptr().cast(), answer.len(), 0);
        if n != 2 {
            fail(&format!("handshake answer: {n} bytes"));
        }
        for p in &packets[1..] {
            libc::send(fd, p.as_ptr().cast(), p.len(), 0);
        }
        std::thread::sleep(Duration::from_millis(100));
        libc::close(fd);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("trace-inject: {msg}");
    std::process::exit(1);
}
