#include <vector>
#include "shape.h"

namespace geo {

// A shape.
class Shape : public Base {
 public:
  virtual double area() const = 0;
  int count() const {
    return n_;
  }
  struct Cache { int hits; };
 private:
  int n_;
};

template <typename T>
T clamp(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

using Point = std::pair<double, double>;

}  // namespace geo

double geo::Shape::perimeter() const { return 0.0; }

extern "C" {
void c_entry(void);
}
