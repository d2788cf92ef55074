//! TUN devices created inside other network namespaces.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread;

use anyhow::{anyhow, bail, Context, Result};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// struct ifreq: a 16-byte name and a 24-byte union (flags or MTU here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            bail!("device name {name:?}: give 1 to 15 characters without '/' or spaces");
        }
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }
}

/// Creates TUN device `dev` (IFF_TUN | IFF_NO_PI, MTU `mtu`) in network
/// namespace `ns` and returns its file. The namespace switch happens in a
/// thread of its own: setns changes only the calling thread, and the device
/// stays in the namespace it was created in.
pub fn open_in(ns: &str, dev: &str, mtu: u32) -> Result<File> {
    let ns_path = Path::new("/var/run/netns").join(ns);
    let ns_file = File::open(&ns_path).map_err(|err| {
        anyhow!("network namespace {ns} ({}): {err}; create it first with `ip netns add {ns}`", ns_path.display())
    })?;
    let (dev, ns) = (dev.to_owned(), ns.to_owned());
    let name = format!("tun-{dev}");
    let what = dev.clone();
    thread::Builder::new()
        .name(name)
        .spawn(move || -> Result<File> {
            // SAFETY: setns on a valid namespace fd; it affects only this thread.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let err = std::io::Error::last_os_error();
                bail!("entering network namespace {ns}: {err} (needs root)");
            }
            create(&dev, mtu).with_context(|| format!("device {dev} in namespace {ns}"))
        })
        .context("starting a thread to enter the namespace")?
        .join()
        .map_err(|_| anyhow!("the thread creating {what} panicked"))?
}

fn create(dev: &str, mtu: u32) -> Result<File> {
    let tun = OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(|err| {
        anyhow!("/dev/net/tun: {err}; load the module (`modprobe tun`) or, in a container, pass the device through")
    })?;
    let mut req = IfReq::new(dev)?;
    req.data[..2].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("TUNSETIFF: {err}; is there already a device of that name? (`ip link del {dev}`)");
    }
    // The MTU is set through a socket of this namespace.
    // SAFETY: plain socket(2); the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket for SIOCSIFMTU: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = IfReq::new(dev)?;
    let mtu = libc::c_int::try_from(mtu).context("MTU too large")?;
    req.data[..4].copy_from_slice(&mtu.to_ne_bytes());
    // SAFETY: SIOCSIFMTU reads one struct ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as _, &mut req as *mut IfReq) } != 0 {
        bail!("setting MTU {mtu}: {}", std::io::Error::last_os_error());
    }
    Ok(tun)
}
