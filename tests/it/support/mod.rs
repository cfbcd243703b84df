pub mod db;
pub mod controller;
