pub mod embedded;
pub mod haproxy;
pub mod none;
pub mod per_host;
pub mod rackspace;
pub(crate) mod shared;
