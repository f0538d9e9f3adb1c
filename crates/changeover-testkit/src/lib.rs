//! Dev-only fixtures that start REAL servers on loopback in a temp dir and
//! kill them on drop. A missing program is a test failure with an install
//! hint, never a silent skip.

pub mod consul;
pub mod etcd;
pub mod fakehttp;
pub mod frontfleet;
pub mod haproxy;
pub mod load;
pub mod rackspace;
pub mod receiver;
pub mod sshd;
pub mod tls;
pub mod tools;
