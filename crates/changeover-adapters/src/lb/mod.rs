pub mod embedded;
pub mod haproxy;
pub mod none;
