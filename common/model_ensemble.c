/* model_ensemble.c - building an ensemble from its spec and its resolved
 * members: nested ensembles flattened into one weighted list of MLPs. */
#include "model.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "kf_util.h"

/* Adds weight * act(mlp) to the flat member list, merging a repeated
 * (MLP, act): the same network under two acts is two members. */
static int model_ens_add(model_member_t *mem, uint32_t *n, model_t *mlp, model_act_t act,
                         double weight, const char *ens_name, char *errstr, size_t errstr_size)
{
        for (uint32_t i = 0; i < *n; i++) {
                if (mem[i].model == mlp && mem[i].act == act) {
                        double w = (double)mem[i].weight + weight;
                        if (!isfinite(w) || fabs(w) > FLT_MAX)
                                return kf_errf(errstr, errstr_size,
                                               "ensemble '%s': the weights of '%s' add up to "
                                               "more than a float32 holds",
                                               ens_name, mlp->name);
                        mem[i].weight = (float)w;
                        return 0;
                }
        }
        if (*n == MODEL_MAX_MEMBERS)
                return kf_errf(errstr, errstr_size,
                               "ensemble '%s': more than %d distinct models once nested "
                               "ensembles are expanded",
                               ens_name, MODEL_MAX_MEMBERS);
        if (!isfinite(weight) || fabs(weight) > FLT_MAX)
                return kf_errf(errstr, errstr_size,
                               "ensemble '%s': the weight of '%s' overflows a float32", ens_name,
                               mlp->name);
        mem[*n].model = mlp;
        mem[*n].weight = (float)weight;
        mem[*n].act = act;
        (*n)++;
        return 0;
}

model_t *model_ens_build(const model_ens_spec_t *spec, model_t *const *resolved, char *errstr,
                         size_t errstr_size)
{
        model_member_t mem[MODEL_MAX_MEMBERS];
        uint32_t n = 0;
        model_t *m;

        for (uint32_t i = 0; i < spec->n_members; i++) {
                const model_t *r = resolved[i];
                if (!r) {
                        kf_errf(errstr, errstr_size, "member %u ('%s') is not resolved", i,
                                spec->members[i].model);
                        return NULL;
                }
                if (r->input_dim != spec->input_dim || r->output_dim != spec->output_dim) {
                        kf_errf(errstr, errstr_size,
                                "member %u: model '%s' version %u is %u->%u, the ensemble '%s' "
                                "is %u->%u",
                                i, r->name, r->version, r->input_dim, r->output_dim, spec->name,
                                spec->input_dim, spec->output_dim);
                        return NULL;
                }
                if (r->kind == MODEL_KIND_MLP) {
                        if (model_ens_add(mem, &n, (model_t *)r, spec->members[i].act,
                                          spec->members[i].weight, spec->name, errstr,
                                          errstr_size) != 0)
                                return NULL;
                        continue;
                }
                /* act(a + b) is not act(a) + act(b): an act on a nested
                 * ensemble would need it computed apart, which flattening
                 * gives up for one pass per distinct network. */
                if (spec->members[i].act != MODEL_ACT_IDENTITY) {
                        kf_errf(errstr, errstr_size,
                                "member %u: model '%s' version %u is an ensemble; act \"%s\" "
                                "applies to an mlp member only (put the act on its members)",
                                i, r->name, r->version, model_act_name(spec->members[i].act));
                        return NULL;
                }
                for (uint32_t j = 0; j < r->n_members; j++) {
                        if (model_ens_add(mem, &n, r->members[j].model, r->members[j].act,
                                          spec->members[i].weight * r->members[j].weight,
                                          spec->name, errstr, errstr_size) != 0)
                                return NULL;
                }
        }

        if (!(m = calloc(1, sizeof(*m))) || !(m->members = calloc(n, sizeof(*m->members)))) {
                free(m);
                kf_errf(errstr, errstr_size, "out of memory");
                return NULL;
        }
        kf_strlcpy(m->name, spec->name, sizeof(m->name));
        m->kind = MODEL_KIND_ENSEMBLE;
        m->input_dim = spec->input_dim;
        m->output_dim = spec->output_dim;
        m->refcnt = 1;
        m->n_members = n;
        for (uint32_t i = 0; i < n; i++) {
                m->members[i].model = model_ref(mem[i].model);
                m->members[i].weight = mem[i].weight;
                m->members[i].act = mem[i].act;
                m->flops_per_row += mem[i].model->flops_per_row;
                m->weight_bytes += mem[i].model->weight_bytes;
                if (mem[i].model->max_width > m->max_width)
                        m->max_width = mem[i].model->max_width;
        }
        return m;
}
