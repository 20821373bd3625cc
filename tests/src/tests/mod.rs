mod admin;
mod auth;
mod config;
mod hygiene;
mod lifecycle;
mod limits;
mod pool;
mod routing;
