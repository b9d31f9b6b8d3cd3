use std::collections::HashMap;
use crate::geometry::{point::Point, Vector as V, self};
use super::*;

mod tests;

/// A circle.
#[derive(Debug)]
pub struct Circle {
    pub r: f64,
}

pub enum Shape { Circle(Circle), Square(f64) }

pub trait Area {
    fn area(&self) -> f64;
}

impl Area for Circle {
    fn area(&self) -> f64 {
        3.14 * self.r * self.r
    }
}

pub fn unit() -> Circle { Circle { r: 1.0 } }

const PI: f64 = 3.14;
static COUNT: i32 = 0;
type Map = HashMap<String, f64>;

macro_rules! square { ($x:expr) => { $x * $x }; }

mod inner {
    pub fn helper() -> i32 { 1 }
}
