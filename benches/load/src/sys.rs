//! The few Linux calls the load tool needs that std does not expose, through the `libc` crate:
//! raising the open-files limit, socket options for kernel receive timestamps and port-less
//! binds, `recvmsg` with its control messages, the clock-tick rate of procfs, the online CPU
//! count, and the client processes' signal dispositions.

use std::io;
use std::mem::{size_of, size_of_val, MaybeUninit};
use std::os::fd::RawFd;

/// Raises the soft open-files limit to the hard limit; returns (soft, hard) after the change.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                return Err(io::Error::last_os_error());
            }
            r.rlim_cur = r.rlim_max;
        }
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` outlives the call; the length is its size.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kernel receive timestamps (CLOCK_REALTIME, taken when the segment reached the socket).
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Bind to an address without reserving a port: the port is chosen at connect time by 4-tuple,
/// so one source address is not limited to one ephemeral range shared by all destinations.
pub fn bind_address_no_port(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Non-blocking `recvmsg` into `buf`; returns the byte count and the kernel receive timestamp
/// (ns since the epoch) of the last segment read, if the kernel attached one.
pub fn recv_with_ts(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16]; // 128 bytes, 8-aligned: room for a timestamp message
    // SAFETY: an all-zero msghdr is valid (null name, no iovecs, no control buffer).
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at live locals of the sizes given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ts = None;
    // SAFETY: the CMSG_* walk stays within `control`, which the kernel filled up to
    // `msg.msg_controllen`; a timestamp message carries a `timespec` (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_TIMESTAMPNS
                && h.cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::timespec>() as u32) as usize
            {
                let t = libc::CMSG_DATA(c).cast::<libc::timespec>().read_unaligned();
                if t.tv_sec != 0 || t.tv_nsec != 0 {
                    ts = Some(t.tv_sec as i64 * 1_000_000_000 + t.tv_nsec as i64);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, ts))
}

/// Clock ticks per second of /proc/PID/stat's utime and stime.
pub fn clk_tck() -> u64 {
    // SAFETY: a plain query.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// CPUs online on the machine (not this process's affinity: the server may use others).
pub fn online_cpus() -> u32 {
    // SAFETY: a plain query.
    let v = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if v > 0 { v as u32 } else { 1 }
}

/// A client process ignores SIGINT and SIGTERM: a Ctrl-C reaches the whole process group, and
/// the coordinator must be the one that decides (it restores a file it edited, then kills its
/// clients). A client still ends when the coordinator goes: its stdin closes.
pub fn ignore_interrupts() {
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread is started.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}
