pub mod haproxy;
pub mod none;
