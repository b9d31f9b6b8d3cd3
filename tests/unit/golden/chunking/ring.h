#ifndef RING_H
#define RING_H

#include <stddef.h>

int ring_pop(void);

#endif
