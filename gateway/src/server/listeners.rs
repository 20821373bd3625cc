//! Where the listening sockets come from: bound here, handed over by the gateway process
//! being upgraded, or passed by systemd (`LISTEN_FDS`).
//!
//! A binary upgrade (`kill -USR2`, see [`super::upgrade`]) starts the new process with a
//! Unix socket as its standard input and [`UPGRADE_ENV`] set. The old process sends one
//! message on it: the listeners' names (`listen`, `tls_listen`, `admin_listen`) as text,
//! with the sockets themselves as `SCM_RIGHTS`. The new process answers on the same socket
//! once it is ready. Passing descriptors this way needs no descriptor numbers agreed in
//! advance and no unsafe code.
//!
//! Either way, a configured address takes the inherited socket of its name (systemd:
//! `FileDescriptorName=`, else the socket bound to that address); an address with port 0
//! takes any inherited socket of its name. Sockets nobody claims are closed, and a
//! configured listener with no inherited socket is bound as usual.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Set in the environment of a process started by a binary upgrade: the old pid.
pub(crate) const UPGRADE_ENV: &str = "GATEWAY_UPGRADE_FROM";
/// Most sockets handed over at once (proxy, TLS, admin, with room to spare).
const MAX_SOCKETS: usize = 8;
/// Longest name list in a hand-over message.
const MAX_NAMES: usize = 256;

/// A listener's role, named by its config key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `server.listen`: plain HTTP.
    Listen,
    /// `server.tls_listen`: HTTPS.
    TlsListen,
    /// `server.admin_listen`: the admin endpoints.
    AdminListen,
}

/// Every role.
const ROLES: [Role; 3] = [Role::Listen, Role::TlsListen, Role::AdminListen];

impl Role {
    /// Its key with the section: `server.listen`.
    pub fn key(self) -> &'static str {
        match self {
            Role::Listen => "server.listen",
            Role::TlsListen => "server.tls_listen",
            Role::AdminListen => "server.admin_listen",
        }
    }

    /// The config key, which is also the socket's name in a hand-over.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Listen => "listen",
            Role::TlsListen => "tls_listen",
            Role::AdminListen => "admin_listen",
        }
    }
}

/// Where inherited sockets came from.
#[derive(Debug)]
enum Source {
    /// Nothing inherited: every listener is bound.
    Nothing,
    /// Systemd socket activation.
    Systemd,
    /// A binary upgrade from the old process (its pid), which waits on `channel` for the
    /// word that this one is ready.
    Upgrade { from: u32, channel: UnixStream },
}

/// One inherited socket.
#[derive(Debug)]
struct Inherited {
    name: Option<String>,
    addr: SocketAddr,
    listener: TcpListener,
}

/// The sockets this process was given at start.
#[derive(Debug)]
pub struct InheritedListeners {
    source: Source,
    sockets: Vec<Inherited>,
}

/// Why inherited sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// Systemd passed something that is not a listening TCP socket.
    #[error("LISTEN_FDS socket {index}: {source}")]
    Systemd {
        /// Its position among the passed sockets.
        index: usize,
        /// What went wrong.
        source: io::Error,
    },
    /// The upgrading process's message could not be read.
    #[error("cannot receive the listening sockets from the upgrading process {from}: {reason}")]
    Upgrade {
        /// The old process.
        from: u32,
        /// What went wrong.
        reason: String,
    },
}

impl InheritedListeners {
    /// Nothing inherited.
    pub fn none() -> Self {
        InheritedListeners { source: Source::Nothing, sockets: Vec::new() }
    }

    /// Takes what the environment passes: an upgrade's sockets, else systemd's. Call it
    /// once, first thing, before other threads start (systemd's variables are removed).
    pub fn from_env() -> Result<Self, InheritError> {
        if let Some(from) = std::env::var(UPGRADE_ENV).ok().and_then(|pid| pid.parse::<u32>().ok()) {
            return receive_upgrade(from);
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|names| names.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut passed = listenfd::ListenFd::from_env();
        if passed.len() == 0 {
            return Ok(InheritedListeners::none());
        }
        let mut sockets = Vec::new();
        for index in 0..passed.len() {
            let listener = passed
                .take_tcp_listener(index)
                .and_then(|l| l.ok_or_else(|| io::Error::other("already taken")))
                .map_err(|source| InheritError::Systemd { index, source })?;
            let addr = listener.local_addr().map_err(|source| InheritError::Systemd { index, source })?;
            let name = names.get(index).filter(|n| !n.is_empty()).cloned();
            sockets.push(Inherited { name, addr, listener });
        }
        Ok(InheritedListeners { source: Source::Systemd, sockets })
    }

    /// How many sockets were inherited.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether nothing was inherited.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// "systemd", "upgrade from 1234", or "none".
    pub fn source(&self) -> String {
        match &self.source {
            Source::Nothing => "none".to_owned(),
            Source::Systemd => "systemd".to_owned(),
            Source::Upgrade { from, .. } => format!("upgrade from {from}"),
        }
    }

    /// The pid of the process this one upgrades, if it does.
    pub fn upgrading_from(&self) -> Option<u32> {
        match &self.source {
            Source::Upgrade { from, .. } => Some(*from),
            _ => None,
        }
    }

    /// The inherited socket for `role` at `configured`, if there is one: by name first,
    /// else by address. Port 0 means "any port", so it takes a named socket at any port.
    pub(crate) fn take(&mut self, role: Role, configured: SocketAddr) -> Option<TcpListener> {
        let fits = |s: &Inherited| {
            s.addr == configured
                || (configured.port() == 0 && (configured.ip().is_unspecified() || configured.ip() == s.addr.ip()))
        };
        let by_name = self.sockets.iter().position(|s| s.name.as_deref() == Some(role.as_str()) && fits(s));
        // A socket named otherwise (systemd's default is the socket unit's name) is
        // matched by its address.
        let is_role = |name: &str| ROLES.iter().any(|r| r.as_str() == name);
        let by_address =
            || self.sockets.iter().position(|s| !s.name.as_deref().is_some_and(is_role) && s.addr == configured);
        let index = by_name.or_else(by_address)?;
        Some(self.sockets.remove(index).listener)
    }

    /// Closes the sockets no listener took, saying which.
    pub(crate) fn close_unclaimed(&mut self) {
        for socket in self.sockets.drain(..) {
            tracing::warn!(
                name = socket.name.as_deref().unwrap_or("unnamed"),
                addr = %socket.addr,
                "an inherited listening socket matches no configured listener; closing it"
            );
        }
    }

    /// Tells the upgrading process that this one serves: it then stops accepting and
    /// drains. Nothing to do without an upgrade.
    pub(crate) fn report_ready(&mut self) {
        if let Source::Upgrade { from, channel } = &mut self.source {
            let line = format!("ready {}\n", std::process::id());
            if let Err(e) = channel.write_all(line.as_bytes()) {
                tracing::error!(from = *from, error = %e, "cannot tell the upgrading process that this one is ready");
            }
        }
    }

    /// Tells the upgrading process why this one will not serve (it keeps serving).
    pub fn report_failure(&mut self, reason: &str) {
        if let Source::Upgrade { channel, .. } = &mut self.source {
            let line = format!("failed {}\n", reason.replace('\n', " "));
            let _ = channel.write_all(line.as_bytes());
        }
    }
}

/// Reads the old process's hand-over message from standard input.
fn receive_upgrade(from: u32) -> Result<InheritedListeners, InheritError> {
    let fail = |reason: String| InheritError::Upgrade { from, reason };
    let stdin = io::stdin();
    let channel_fd: BorrowedFd<'_> = stdin.as_fd();
    let mut sockets = Vec::new();
    for (name, listener) in receive_listeners(channel_fd).map_err(fail)? {
        let addr = listener.local_addr().map_err(|e| fail(format!("socket {name}: {e}")))?;
        sockets.push(Inherited { name: Some(name), addr, listener });
    }
    // The channel is standard input: a duplicate keeps it after stdin's handle is gone.
    let channel = UnixStream::from(channel_fd.try_clone_to_owned().map_err(|e| fail(format!("dup: {e}")))?);
    Ok(InheritedListeners { source: Source::Upgrade { from, channel }, sockets })
}

/// The new process's half of the hand-over: one message of names and sockets.
fn receive_listeners(channel: BorrowedFd<'_>) -> Result<Vec<(String, TcpListener)>, String> {
    let mut names = [0u8; MAX_NAMES];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let received =
        rustix::net::recvmsg(channel, &mut [IoSliceMut::new(&mut names)], &mut ancillary, RecvFlags::CMSG_CLOEXEC)
            .map_err(|e| format!("recvmsg: {e}"))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let text = std::str::from_utf8(&names[..received.bytes]).map_err(|_| "names are not UTF-8".to_owned())?;
    let names: Vec<&str> = if text.is_empty() { Vec::new() } else { text.split(',').collect() };
    if names.len() != fds.len() {
        return Err(format!("{} names for {} sockets", names.len(), fds.len()));
    }
    Ok(names.into_iter().map(str::to_owned).zip(fds.into_iter().map(TcpListener::from)).collect())
}

/// Sends `listeners` (name and socket) over `channel`: the old process's half of the
/// hand-over.
pub(crate) fn send_listeners(channel: &UnixStream, listeners: &[(Role, BorrowedFd<'_>)]) -> io::Result<()> {
    let names = listeners.iter().map(|(role, _)| role.as_str()).collect::<Vec<_>>().join(",");
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("too many sockets for one message"));
    }
    let sent = rustix::net::sendmsg(channel, &[IoSlice::new(names.as_bytes())], &mut ancillary, SendFlags::empty())?;
    if sent != names.len() {
        return Err(io::Error::other("the hand-over message was cut short"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inherited(sockets: Vec<(Option<&str>, &TcpListener)>) -> InheritedListeners {
        InheritedListeners {
            source: Source::Systemd,
            sockets: sockets
                .into_iter()
                .map(|(name, l)| Inherited {
                    name: name.map(str::to_owned),
                    addr: l.local_addr().unwrap(),
                    listener: l.try_clone().unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_listener_takes_its_named_socket_else_the_one_at_its_address() {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        let mut named = inherited(vec![(Some("admin_listen"), &admin), (Some("listen"), &proxy)]);
        assert_eq!(named.take(Role::Listen, proxy_addr).unwrap().local_addr().unwrap(), proxy_addr);
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(named.take(Role::AdminListen, any_port).unwrap().local_addr().unwrap(), admin_addr);
        assert!(named.is_empty());

        let mut unnamed = inherited(vec![(Some("gateway.socket"), &admin), (None, &proxy)]);
        assert_eq!(unnamed.take(Role::Listen, proxy_addr).unwrap().local_addr().unwrap(), proxy_addr);
        assert!(unnamed.take(Role::AdminListen, any_port).is_none(), "an unnamed socket is matched by address only");
        assert!(unnamed.take(Role::TlsListen, "127.0.0.1:1".parse().unwrap()).is_none());
        assert_eq!(unnamed.len(), 1);
    }

    #[test]
    fn a_named_socket_at_another_address_is_not_taken() {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut named = inherited(vec![(Some("listen"), &proxy)]);
        assert!(named.take(Role::Listen, "127.0.0.1:1".parse().unwrap()).is_none(), "the config moved the listener");
    }

    #[test]
    fn sockets_cross_a_unix_socket_with_their_names() {
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let (old, new) = UnixStream::pair().unwrap();
        send_listeners(&old, &[(Role::Listen, proxy.as_fd()), (Role::AdminListen, admin.as_fd())]).unwrap();
        let received = receive_listeners(new.as_fd()).unwrap();
        let names: Vec<&str> = received.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["listen", "admin_listen"]);
        let addrs: Vec<SocketAddr> = received.iter().map(|(_, l)| l.local_addr().unwrap()).collect();
        assert_eq!(addrs, [proxy.local_addr().unwrap(), admin.local_addr().unwrap()]);
    }
}
