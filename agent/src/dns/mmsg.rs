//! Batches of datagrams in one system call each way: `recvmmsg(2)` fills up
//! to [`BATCH`] slots with what is queued on the socket, `sendmmsg(2)` sends
//! the answers to their senders. The buffers are allocated once per worker.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::RawFd,
};

/// Datagrams per system call at most.
pub const BATCH: usize = 32;
/// Bytes received per datagram at most; a longer query is cut (and
/// answered FORMERR from its header).
pub const SLOT: usize = 4096;

/// A received datagram and the buffer for its answer.
pub struct Slot<'a> {
    pub msg: &'a [u8],
    /// The sender (`None`: not an IP address).
    pub from: Option<SocketAddr>,
    /// Longer than [`SLOT`]: cut.
    pub cut: bool,
    pub out: &'a mut Vec<u8>,
}

/// One worker's receive slots and its answers.
pub struct Batch {
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// The answers, by slot.
    pub out: Vec<Vec<u8>>,
    /// Slots whose answer is to be sent, in order.
    reply: Vec<usize>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the batch's own
// boxes (set again before every call); nothing is shared.
unsafe impl Send for Batch {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain data for
            // which all zeroes is valid.
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            out: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            reply: Vec::with_capacity(BATCH),
        }
    }

    /// Receives on `fd`: waits for a datagram (up to the socket's timeout:
    /// `WouldBlock`), then takes what else is queued. The number of
    /// datagrams (once the socket is shut down: empty ones, from no one).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.reply.clear();
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: slot i lies within `bufs` (BATCH * SLOT bytes).
            self.iovs[i] = libc::iovec { iov_base: unsafe { base.add(i * SLOT) }.cast(), iov_len: SLOT };
            // No sender unless the kernel writes one.
            self.addrs[i].ss_family = 0;
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at buffers of the stated sizes that
        // outlive the call.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Datagram `i` of the last [`Batch::recv`] and the buffer for its answer.
    pub fn slot(&mut self, i: usize) -> Slot<'_> {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT);
        Slot {
            msg: &self.bufs[i * SLOT..i * SLOT + len],
            from: sockaddr(&self.addrs[i]),
            cut: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            out: &mut self.out[i],
        }
    }

    /// Slot `i`'s answer (in `out[i]`) goes to its sender.
    pub fn reply(&mut self, i: usize) {
        self.reply.push(i);
    }

    /// Answers not sent yet.
    pub fn pending(&self) -> usize {
        self.reply.len()
    }

    /// Sends the pending answers; those the socket took are no longer
    /// pending.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.reply.len();
        if n == 0 {
            return Ok(0);
        }
        for (j, &i) in self.reply.iter().enumerate() {
            let o = &self.out[i];
            self.iovs[j] = libc::iovec { iov_base: o.as_ptr().cast_mut().cast(), iov_len: o.len() };
            let h = &mut self.hdrs[j];
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = match self.addrs[i].ss_family as i32 {
                libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
                _ => size_of::<libc::sockaddr_in>(),
            } as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iovs[j];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first n headers point at answers and addresses that
        // outlive the call.
        let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        self.reply.drain(..sent as usize);
        Ok(sent as usize)
    }

    /// Forgets the first pending answer (the socket refused it).
    pub fn skip_one(&mut self) {
        if !self.reply.is_empty() {
            self.reply.remove(0);
        }
    }
}

fn sockaddr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match a.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in.
            let v4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(v4.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it holds a sockaddr_in6.
            let v6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)), u16::from_be(v6.sin6_port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn a_batch_in_and_its_answers_out() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 3], to).unwrap();
        }
        client.send_to(&vec![9u8; SLOT + 10], to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut b = Batch::new();
        let n = b.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, 6);
        for i in 0..n {
            let s = b.slot(i);
            assert_eq!(s.from, Some(client.local_addr().unwrap()));
            assert_eq!(s.cut, i == 5, "{i}");
            if i < 5 {
                assert_eq!(s.msg, &[i as u8; 3]);
                *s.out = vec![i as u8 + 100];
                b.reply(i);
            }
        }
        assert_eq!(b.send(server.as_raw_fd()).unwrap(), 5);
        assert_eq!(b.pending(), 0);
        let mut buf = [0u8; 16];
        for i in 0..5u8 {
            let (len, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..len], from), (&[i + 100][..], to));
        }
        server.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        assert_eq!(b.recv(server.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock, "timed out");
        // A shutdown wakes a thread waiting in recvmmsg.
        let s2 = server.try_clone().unwrap();
        s2.set_read_timeout(None).unwrap();
        let waiting = std::thread::spawn(move || {
            let mut b = Batch::new();
            let n = b.recv(s2.as_raw_fd()).unwrap();
            (0..n).all(|i| b.slot(i).msg.is_empty() && b.slot(i).from.is_none())
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        // SAFETY: shutdown(2) on our socket.
        unsafe { libc::shutdown(server.as_raw_fd(), libc::SHUT_RDWR) };
        assert!(waiting.join().unwrap(), "woken, nothing received");
    }
}
