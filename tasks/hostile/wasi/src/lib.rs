//! Looks for what WASI must not give a task: environment variables, arguments, bytes on stdin,
//! preopened directories and sockets. Logs what it found, one `KEY VALUE` line each, for the
//! test to check: `env N`, `args N`, `stdin N` (bytes), and `CALL FD -> ERRNO` for
//! `fd_prestat_get` and every `sock_*` call on descriptors 0 to 9.

use std::io::Read;

use shoal::{Ctx, Error, log};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn fd_prestat_get(fd: u32, out: u32) -> i32;
        pub fn sock_accept(fd: u32, flags: u32, out_fd: u32) -> i32;
        pub fn sock_recv(
            fd: u32,
            iovs: u32,
            iovs_len: u32,
            flags: u32,
            out_len: u32,
            out_flags: u32,
        ) -> i32;
        pub fn sock_send(fd: u32, iovs: u32, iovs_len: u32, flags: u32, out_len: u32) -> i32;
        pub fn sock_shutdown(fd: u32, how: u32) -> i32;
    }
}

/// Natively there is no WASI to probe: every call answers `ENOSYS` (52).
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    pub unsafe fn fd_prestat_get(_: u32, _: u32) -> i32 {
        52
    }
    pub unsafe fn sock_accept(_: u32, _: u32, _: u32) -> i32 {
        52
    }
    pub unsafe fn sock_recv(_: u32, _: u32, _: u32, _: u32, _: u32, _: u32) -> i32 {
        52
    }
    pub unsafe fn sock_send(_: u32, _: u32, _: u32, _: u32, _: u32) -> i32 {
        52
    }
    pub unsafe fn sock_shutdown(_: u32, _: u32) -> i32 {
        52
    }
}

/// Reports the environment, arguments and stdin it got, and what the socket calls answered.
#[shoal::task]
fn wasi(_ctx: &mut Ctx) -> Result<(), Error> {
    log!("env {}", std::env::vars_os().count());
    log!("args {}", std::env::args_os().count());
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin)?;
    log!("stdin {}", stdin.len());

    let mut buf = [0u8; 64];
    let data = buf.as_mut_ptr() as u32;
    // One iovec (ptr, len) over the second half of `buf`.
    let iovec = [data + 32, 32];
    let iov = iovec.as_ptr() as u32;
    let out = data + 16;
    for fd in 0..10 {
        // SAFETY: every pointer is into `buf` or `iov`, live and large enough for what WASI
        // writes there (a prestat is 8 bytes, an fd or a length 4, flags 2).
        let answers = unsafe {
            [
                ("fd_prestat_get", raw::fd_prestat_get(fd, out)),
                ("sock_accept", raw::sock_accept(fd, 0, out)),
                ("sock_recv", raw::sock_recv(fd, iov, 1, 0, out, out + 4)),
                ("sock_send", raw::sock_send(fd, iov, 1, 0, out)),
                ("sock_shutdown", raw::sock_shutdown(fd, 3)),
            ]
        };
        for (call, errno) in answers {
            log!("{call} {fd} -> {errno}");
        }
    }
    Ok(())
}
