//! A host of the test's own: a Linux network namespace joined to this one by veth pairs, one
//! per service it reaches, so a test can cut exactly one of its links (the node from Redis,
//! the node from Postgres) while the others keep working. Needs root and iproute2 (`ip`);
//! when they are missing the tests fail, unless `TEST_NETNS=skip` says to skip them.
//!
//! The services listen on the test's loopback, which another namespace cannot reach, so
//! each link carries a [`Forward`]: a TCP relay on the link's outside end to the service.
//! Clients reach the node inside through a relay that connects from inside the namespace.
//! A cut is `ip link set … down` on the namespace's end: established connections hang with
//! their packets dropped (a silent partition, as when a switch fails) and new ones fail,
//! until the link comes back. (`tc netem` and packet filters are not available in this
//! kernel, so there is no partial loss here.)

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// Whether the namespace tests run here; `None` (after saying why) when `TEST_NETNS=skip`.
pub fn available() -> Option<()> {
    if std::env::var("TEST_NETNS").as_deref() == Ok("skip") {
        eprintln!("TEST_NETNS=skip: skipping a network-namespace test");
        return None;
    }
    Some(())
}

/// iproute2's `ip`: on the PATH, or where Debian puts it (root's PATH has it; others may not).
fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip")
}

fn ip(args: &[&str]) {
    let out = Command::new(ip_program())
        .args(args)
        .output()
        .expect("iproute2's `ip` is installed (or set TEST_NETNS=skip)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root; TEST_NETNS=skip skips these tests)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// One link between the namespace and the test's own network.
pub struct Link {
    /// The address of the test's end, outside the namespace (where forwards listen).
    pub outside: IpAddr,
    dev: String,
}

/// A network namespace, deleted (with its links) on drop.
pub struct Netns {
    name: String,
    serial: u32,
    links: u32,
}

impl Netns {
    /// A new namespace with its loopback up and no links yet.
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rsn-{}-{serial}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            serial,
            links: 0,
        };
        ns.exec(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A new veth pair on its own /30 (`10.<200 + pid % 50>.<serial>.<4·link>`).
    pub fn link(&mut self) -> Link {
        let n = self.links;
        self.links += 1;
        assert!(n < 63 && self.serial < 256);
        let pid = std::process::id();
        let (outside_dev, dev) = (
            format!("rv{}{}{n}o", pid % 100_000, self.serial),
            format!("rv{}{}{n}i", pid % 100_000, self.serial),
        );
        let net = format!("10.{}.{}", 200 + pid % 50, self.serial);
        let outside = format!("{net}.{}", 4 * n + 1);
        let inside = format!("{net}.{}", 4 * n + 2);
        ip(&[
            "link",
            "add",
            &outside_dev,
            "type",
            "veth",
            "peer",
            "name",
            &dev,
        ]);
        ip(&["link", "set", &dev, "netns", &self.name]);
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &outside_dev]);
        ip(&["link", "set", &outside_dev, "up"]);
        self.exec(&["addr", "add", &format!("{inside}/30"), "dev", &dev]);
        self.exec(&["link", "set", &dev, "up"]);
        Link {
            outside: outside.parse().unwrap(),
            dev,
        }
    }

    /// Cuts `link`: nothing crosses it until [`Netns::mend`].
    pub fn cut(&self, link: &Link) {
        self.exec(&["link", "set", &link.dev, "down"]);
    }

    /// Brings `link` back.
    pub fn mend(&self, link: &Link) {
        self.exec(&["link", "set", &link.dev, "up"]);
    }

    /// The command prefix that runs a program inside this namespace.
    pub fn wrapper(&self) -> [&str; 4] {
        [ip_program(), "netns", "exec", &self.name]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends, and with them the pairs.
        let _ = Command::new(ip_program())
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A TCP relay for as long as it lives: from a link's outside end to a service on the
/// test's loopback ([`Forward::new`]), or from the test's loopback to a server listening on
/// the namespace's own loopback ([`Forward::into`]; development mode listens on loopback only).
pub struct Forward {
    /// Where to connect.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Relays connections to `link.outside` (a free port) to `target`.
    pub async fn new(link: &Link, target: SocketAddr) -> Forward {
        let listener = TcpListener::bind((link.outside, 0)).await.unwrap();
        Self::relay(
            listener,
            move || async move { TcpStream::connect(target).await },
        )
        .await
    }

    /// Relays connections to a free port of the test's loopback to `target` inside `ns`.
    pub async fn into(ns: &Netns, target: SocketAddr) -> Forward {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let path = format!("/var/run/netns/{}", ns.name);
        Self::relay(listener, move || {
            let path = path.clone();
            async move {
                let stream = tokio::task::spawn_blocking(move || connect_in(&path, target))
                    .await
                    .unwrap()?;
                stream.set_nonblocking(true)?;
                TcpStream::from_std(stream)
            }
        })
        .await
    }

    async fn relay<F, Fut>(listener: TcpListener, connect: F) -> Forward
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<TcpStream>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let outbound = connect();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = outbound.await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forward { addr, task }
    }
}

/// Connects to `target` from inside the namespace at `path`: a socket belongs to the
/// namespace of the thread that made it, so a thread of its own enters it first.
fn connect_in(path: &str, target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let path = path.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns on this short-lived thread only, with an open namespace file.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect(target)
    })
    .join()
    .expect("the connecting thread")
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
