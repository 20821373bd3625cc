mod admin;
mod config;
mod hygiene;
mod lifecycle;
mod limits;
mod routing;
