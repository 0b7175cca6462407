//! Listening sockets, CPU selection and the io_uring availability check: everything done on the
//! main thread before the shards start.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Creates `count` listening sockets on `addr` with SO_REUSEPORT, so the kernel spreads
/// connections across the shards. With port 0 the first socket picks the port and the others
/// join it. All sockets listen before any shard accepts, so no connection lands on a socket
/// nobody serves.
pub fn reuseport_group(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(SocketAddr, Vec<RawFd>)> {
    let mut bound = addr;
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit it (Linux copies the listener's TCP options).
        socket.set_nodelay(true)?;
        socket.bind(&bound.into())?;
        socket.listen(backlog)?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        }
        fds.push(socket.into_raw_fd());
    }
    Ok((bound, fds))
}

/// A plain listener on 127.0.0.1 with an ephemeral port (the per-shard test hook).
pub fn loopback_listener(backlog: i32) -> io::Result<(SocketAddr, RawFd)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(backlog)?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no IP address"))?;
    Ok((addr, socket.into_raw_fd()))
}

/// The CPUs this process may run on (its affinity mask, which respects cgroups and taskset,
/// unlike the list of online CPUs).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Fails with a clear message when io_uring cannot be used (old kernel, a container's seccomp
/// profile, or `kernel.io_uring_disabled`), or lacks a feature the engine needs (multishot
/// receive with a provided-buffer ring: Linux 6.0).
pub fn check_io_uring() -> io::Result<()> {
    match crate::net::Engine::probe() {
        Ok(mode) => {
            tracing::debug!(%mode, "io_uring engine features present");
            Ok(())
        }
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!(
                "io_uring is unavailable or too old ({error}). shardmq needs Linux >= 6.0 with \
                 io_uring allowed: check `sysctl kernel.io_uring_disabled` and, in Docker, run \
                 with a seccomp profile that permits io_uring_setup/io_uring_enter/\
                 io_uring_register"
            ),
        )),
    }
}
