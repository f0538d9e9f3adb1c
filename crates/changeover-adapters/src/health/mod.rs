pub mod command;
pub mod http;
pub mod tcp;
