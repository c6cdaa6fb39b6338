//! The few Linux system calls the load tool needs that std does not expose, declared by hand
//! (the crate has no direct `libc` dependency). 64-bit Linux (x86_64, aarch64) layouts only.

use std::io;
use std::os::fd::RawFd;
use std::os::raw::{c_int, c_long, c_void};

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

#[repr(C)]
struct IoVec {
    base: *mut c_void,
    len: usize,
}

#[repr(C)]
struct MsgHdr {
    name: *mut c_void,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut c_void,
    controllen: usize,
    flags: c_int,
}

#[repr(C)]
struct CmsgHdr {
    len: usize,
    level: c_int,
    ty: c_int,
}

extern "C" {
    fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
    fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
    fn recvmsg(fd: c_int, msg: *mut MsgHdr, flags: c_int) -> isize;
    fn sysconf(name: c_int) -> c_long;
}

const RLIMIT_NOFILE: c_int = 7;
const SOL_SOCKET: c_int = 1;
const SO_TIMESTAMPNS: c_int = 35; // SO_TIMESTAMPNS_OLD: a struct timespec in CLOCK_REALTIME
const SCM_TIMESTAMPNS: c_int = SO_TIMESTAMPNS;
const IPPROTO_IP: c_int = 0;
const IP_BIND_ADDRESS_NO_PORT: c_int = 24;
const MSG_DONTWAIT: c_int = 0x40;
const SC_CLK_TCK: c_int = 2;

/// Raises the soft open-files limit to the hard limit; returns (soft, hard) after the change.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut r = RLimit { cur: 0, max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) != 0 {
            return Err(io::Error::last_os_error());
        }
        if r.cur < r.max {
            let want = RLimit { cur: r.max, max: r.max };
            if setrlimit(RLIMIT_NOFILE, &want) != 0 {
                return Err(io::Error::last_os_error());
            }
            r.cur = r.max;
        }
    }
    Ok((r.cur, r.max))
}

fn set_int(fd: RawFd, level: c_int, name: c_int, v: c_int) -> io::Result<()> {
    // SAFETY: `v` outlives the call; the length matches.
    let rc = unsafe { setsockopt(fd, level, name, &v as *const c_int as *const c_void, 4) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kernel receive timestamps (CLOCK_REALTIME, taken when the segment reached the socket).
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    set_int(fd, SOL_SOCKET, SO_TIMESTAMPNS, 1)
}

/// Bind to an address without reserving a port: the port is chosen at connect time by 4-tuple,
/// so one source address is not limited to one ephemeral range shared by all destinations.
pub fn bind_address_no_port(fd: RawFd) -> io::Result<()> {
    set_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Non-blocking `recvmsg` into `buf`; returns the byte count and the kernel receive timestamp
/// (ns since the epoch) of the last segment read, if the kernel attached one.
pub fn recv_with_ts(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    let mut iov = IoVec { base: buf.as_mut_ptr() as *mut c_void, len: buf.len() };
    let mut control = [0u64; 16]; // 128 bytes, 8-aligned
    let mut msg = MsgHdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.as_mut_ptr() as *mut c_void,
        controllen: std::mem::size_of_val(&control),
        flags: 0,
    };
    // SAFETY: every pointer in `msg` points at live locals of the right sizes.
    let n = unsafe { recvmsg(fd, &mut msg, MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ts = None;
    let hdr = std::mem::size_of::<CmsgHdr>();
    let mut off = 0usize;
    let base = control.as_ptr() as *const u8;
    while off + hdr <= msg.controllen {
        // SAFETY: within `control`, which the kernel filled up to `msg.controllen`.
        let c = unsafe { &*(base.add(off) as *const CmsgHdr) };
        if c.len < hdr {
            break;
        }
        if c.level == SOL_SOCKET && c.ty == SCM_TIMESTAMPNS && c.len >= hdr + 16 {
            // SAFETY: a struct timespec (two i64 on 64-bit Linux) follows the header.
            let (sec, nsec) = unsafe {
                let p = base.add(off + hdr) as *const i64;
                (p.read_unaligned(), p.add(1).read_unaligned())
            };
            if sec != 0 || nsec != 0 {
                ts = Some(sec * 1_000_000_000 + nsec);
            }
        }
        off += (c.len + 7) & !7;
    }
    Ok((n as usize, ts))
}

/// Clock ticks per second of /proc/PID/stat's utime and stime.
pub fn clk_tck() -> u64 {
    // SAFETY: a plain query.
    let v = unsafe { sysconf(SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}
