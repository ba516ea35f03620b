/* model_registry.h - the model registry in Redis: both halves, for callers
 * that use either.  model_registry_read.h is the layout, the types and the
 * reads the workers do; model_registry_admin.h the changes the CLI makes. */
#ifndef KF_MODEL_REGISTRY_H
#define KF_MODEL_REGISTRY_H

#include "model_registry_admin.h"
#include "model_registry_read.h"

#endif
