pub mod bootnet;
pub mod controller;
pub mod db;
pub mod netns;
