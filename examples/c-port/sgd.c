/*
 * sgd.c -- Caffe 1.0's SGD solver update in plain C, speaking caffe-harness's
 * `cmd:` port protocol (docs/PORTS.md).
 *
 *   make && caffe-harness check --port "cmd:examples/c-port/sgd"
 *
 * The harness runs `sgd DIR` once per trace. DIR/manifest.txt holds the
 * solver settings and blob list as "key value..." lines; the initial weights
 * and every pass's gradients are raw little-endian float32 files. We write
 * DIR/out/K/{params,diff,history}/B.bin, DIR/out/K/lr.bin and
 * DIR/out/K/current_step.txt for every iteration K, or DIR/out/status.txt
 * with "unsupported REASON" / "refused MESSAGE".
 *
 * Arithmetic follows the Caffe build that recorded the trace ("blas" in the
 * manifest): OpenBLAS fuses saxpy into one FMA (fmaf) and sums sdot in its
 * Haswell kernel's order; reference BLAS and ATLAS round every operation.
 * Compile with -ffp-contract=off so the compiler fuses nothing on its own:
 * every fmaf below is deliberate. Only the SGD solver type is implemented.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAXB 64
#define MAXSV 64

enum { ZERO_MULTIPLY, ZERO_FILL_NAN };

static struct {
    char type[32], lr_policy[32], blas[32], reg[32], solver_mode[32], solver_type[32];
    float base_lr, gamma, power, momentum, weight_decay, clip;
    int stepsize, max_iter, iter_size, start_iter, start_cs, start_history, iterations, average_loss, type_set;
    int nsv, sv[MAXSV];
    int nb;
    long count[MAXB];
    float lr_mult[MAXB], decay_mult[MAXB];
} M;

static const char *dir;
static int fused, zero_mode;

static void die(const char *what, const char *path) {
    fprintf(stderr, "sgd: %s: %s\n", what, path ? path : "");
    exit(2);
}

static void status(const char *fmt, const char *msg) {
    char p[4096];
    snprintf(p, sizeof p, "%s/out/status.txt", dir);
    FILE *f = fopen(p, "w");
    if (!f) die("cannot write", p);
    fprintf(f, fmt, msg);
    fclose(f);
}

static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(tmp, 0777); *p = '/'; }
    mkdir(tmp, 0777);
}

static void read_floats(const char *path, float *x, long n) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    if ((long)fread(x, sizeof(float), n, f) != n) die("short file", path);
    fclose(f);
}

static void write_floats(const char *path, const float *x, long n) {
    FILE *f = fopen(path, "wb");
    if (!f || (long)fwrite(x, sizeof(float), n, f) != n) die("cannot write", path);
    fclose(f);
}

static void read_manifest(void) {
    char p[4096], line[8192], key[64];
    snprintf(p, sizeof p, "%s/manifest.txt", dir);
    FILE *f = fopen(p, "r");
    if (!f) die("cannot open", p);
    while (fgets(line, sizeof line, f)) {
        char *v;
        if (sscanf(line, "%63s", key) != 1) continue;
        v = line + strlen(key);
        if (!strcmp(key, "type")) sscanf(v, "%31s", M.type);
        else if (!strcmp(key, "lr_policy")) sscanf(v, "%31s", M.lr_policy);
        else if (!strcmp(key, "blas")) sscanf(v, "%31s", M.blas);
        else if (!strcmp(key, "regularization_type")) sscanf(v, "%31s", M.reg);
        else if (!strcmp(key, "solver_mode")) sscanf(v, "%31s", M.solver_mode);
        else if (!strcmp(key, "solver_type")) sscanf(v, "%31s", M.solver_type);
        else if (!strcmp(key, "average_loss")) M.average_loss = atoi(v);
        else if (!strcmp(key, "type_set")) M.type_set = atoi(v);
        else if (!strcmp(key, "base_lr")) M.base_lr = strtof(v, NULL);
        else if (!strcmp(key, "gamma")) M.gamma = strtof(v, NULL);
        else if (!strcmp(key, "power")) M.power = strtof(v, NULL);
        else if (!strcmp(key, "momentum")) M.momentum = strtof(v, NULL);
        else if (!strcmp(key, "weight_decay")) M.weight_decay = strtof(v, NULL);
        else if (!strcmp(key, "clip_gradients")) M.clip = strtof(v, NULL);
        else if (!strcmp(key, "stepsize")) M.stepsize = atoi(v);
        else if (!strcmp(key, "max_iter")) M.max_iter = atoi(v);
        else if (!strcmp(key, "iter_size")) M.iter_size = atoi(v);
        else if (!strcmp(key, "start_iter")) M.start_iter = atoi(v);
        else if (!strcmp(key, "start_current_step")) M.start_cs = atoi(v);
        else if (!strcmp(key, "start_history")) M.start_history = atoi(v);
        else if (!strcmp(key, "iterations")) M.iterations = atoi(v);
        else if (!strcmp(key, "stepvalue")) {
            char *e;
            M.nsv = (int)strtol(v, &e, 10);
            if (M.nsv > MAXSV) die("too many stepvalues", p);
            for (int i = 0; i < M.nsv; i++) M.sv[i] = (int)strtol(e, &e, 10);
        } else if (!strcmp(key, "blob")) {
            int i;
            char name[256];
            long count;
            float lm, dm;
            if (sscanf(v, "%d %255s %ld %f %f", &i, name, &count, &lm, &dm) != 5 || i < 0 || i >= MAXB) die("bad blob line", p);
            M.count[i] = count; M.lr_mult[i] = lm; M.decay_mult[i] = dm;
            if (i + 1 > M.nb) M.nb = i + 1;
        }
    }
    fclose(f);
}

/* ---- the BLAS calls Caffe's CPU SGD uses, as the trace's build does them ---- */
static void sscal(long n, float alpha, float *y) {
    if (alpha == 1.0f) return;
    if (zero_mode == ZERO_FILL_NAN && (alpha == 0.0f || alpha != alpha)) { memset(y, 0, n * sizeof(float)); return; }
    for (long i = 0; i < n; i++) y[i] = alpha * y[i];
}

static void saxpy(long n, float alpha, const float *x, float *y) {
    if (alpha == 0.0f) return;
    if (fused) for (long i = 0; i < n; i++) y[i] = fmaf(alpha, x[i], y[i]);
    else for (long i = 0; i < n; i++) y[i] = y[i] + alpha * x[i];
}

static float sdot_self(long n, const float *x) {
    if (!strcmp(M.blas, "openblas")) {            /* OpenBLAS Haswell kernel order */
        long n1 = n - n % 32;
        float acc[4][8] = {{0}};
        for (long i = 0; i < n1; i += 32)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 8; l++) { float v = x[i + 8 * j + l]; acc[j][l] = fmaf(v, v, acc[j][l]); }
        float vec = 0.0f;
        if (n1) {
            float c[4][4], d[4];
            for (int j = 0; j < 4; j++) for (int l = 0; l < 4; l++) c[j][l] = acc[j][l] + acc[j][l + 4];
            for (int l = 0; l < 4; l++) d[l] = (c[0][l] + c[1][l]) + (c[2][l] + c[3][l]);
            vec = (d[0] + d[1]) + (d[2] + d[3]);
        }
        double dot = 0.0;
        for (long i = n1; i < n; i++) dot += (double)(x[i] * x[i]);
        dot += (double)vec;
        return (float)dot;
    }
    if (!strcmp(M.blas, "atlas")) {               /* four round-robin accumulators */
        long m = n - n % 4;
        float d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        for (long i = 0; i < m; i += 4) {
            d0 += x[i] * x[i]; d1 += x[i + 1] * x[i + 1]; d2 += x[i + 2] * x[i + 2]; d3 += x[i + 3] * x[i + 3];
        }
        float s = (d0 + d1) + (d2 + d3);
        for (long i = m; i < n; i++) s += x[i] * x[i];
        return s;
    }
    float s = 0.0f;                                /* reference BLAS: in order */
    for (long i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* ---- SGDSolver::GetLearningRate; returns 0 and fills msg when Caffe refuses ---- */
static int refusal(char *msg, size_t len) {
    const char *p = M.lr_policy;
    char g[64], s[64];
    snprintf(g, sizeof g, "Check failed: this->param_.gamma() >= 0 (%g vs. 0)", (double)M.gamma);
    snprintf(s, sizeof s, "Check failed: this->param_.stepsize() > 0 (%d vs. 0)", M.stepsize);
    if (M.max_iter <= M.start_iter) return 0;
    if (!strcmp(p, "fixed") || !strcmp(p, "poly")) { /* no checks */ }
    else if (!strcmp(p, "step")) {
        if (!(M.stepsize > 0)) { snprintf(msg, len, "%s", s); return 1; }
        if (!(M.gamma >= 0)) { snprintf(msg, len, "%s", g); return 1; }
    } else if (!strcmp(p, "exp") || !strcmp(p, "inv") || !strcmp(p, "multistep")) {
        if (!(M.gamma >= 0)) { snprintf(msg, len, "%s", g); return 1; }
    } else if (!strcmp(p, "sigmoid")) {
        if (!(M.gamma >= 0)) { snprintf(msg, len, "%s", g); return 1; }
        if (!(M.stepsize > 0)) { snprintf(msg, len, "%s", s); return 1; }
    } else {
        snprintf(msg, len, "Unknown learning rate policy: %s", strcmp(p, "-") ? p : "");
        return 1;
    }
    if (strcmp(M.reg, "L2") && strcmp(M.reg, "L1")) {
        for (int b = 0; b < M.nb; b++)
            if (M.weight_decay * M.decay_mult[b] != 0.0f) {
                snprintf(msg, len, "Unknown regularization type: %s", M.reg);
                return 1;
            }
    }
    return 0;
}

static float rate(int iter, int *cs) {
    const char *p = M.lr_policy;
    if (!strcmp(p, "fixed")) return M.base_lr;
    if (!strcmp(p, "step")) {                     /* pow(float, int) promotes to double */
        *cs = iter / M.stepsize;
        return (float)((double)M.base_lr * pow((double)M.gamma, (double)*cs));
    }
    if (!strcmp(p, "exp")) return (float)((double)M.base_lr * pow((double)M.gamma, (double)iter));
    if (!strcmp(p, "inv")) return M.base_lr * powf(1.0f + M.gamma * (float)iter, -M.power);
    if (!strcmp(p, "multistep")) {                /* at most one step per call */
        if (*cs < M.nsv && iter >= M.sv[*cs]) (*cs)++;
        return (float)((double)M.base_lr * pow((double)M.gamma, (double)*cs));
    }
    if (!strcmp(p, "poly")) return M.base_lr * powf(1.0f - (float)iter / (float)M.max_iter, M.power);
    /* sigmoid */
    return M.base_lr * (1.0f / (1.0f + expf(-M.gamma * ((float)iter - (float)M.stepsize))));
}

int main(int argc, char **argv) {
    char p[4096], msg[512];
    if (argc != 2) { fprintf(stderr, "usage: sgd DIR (run by caffe-harness check --port cmd:...)\n"); return 2; }
    dir = argv[1];
    read_manifest();
    /* Caffe's start-time checks, in its order (the solver registry's is "unsupported" here) */
    if (strcmp(M.solver_type, "-") && M.type_set) {
        status("refused %s\n", "Check failed: !solver_param->has_solver_type() || !solver_param->has_type() "
               "Failed to upgrade solver: old solver_type field (enum) and new type field (string) "
               "cannot be both specified in solver proto text.");
        return 0;
    }
    if (!strcmp(M.solver_mode, "GPU")) { status("refused %s\n", "Cannot use GPU in CPU-only Caffe: check mode."); return 0; }
    if (strcmp(M.type, "SGD")) {
        status("unsupported this C port implements only the SGD solver, not %s\n", M.type);
        return 0;
    }
    if (M.average_loss < 1) {
        snprintf(msg, sizeof msg, "Check failed: param_.average_loss() >= 1 (%d vs. 1) average_loss should be non-negative.",
                 M.average_loss);
        status("refused %s\n", msg);
        return 0;
    }
    if (refusal(msg, sizeof msg)) { status("refused %s\n", msg); return 0; }
    fused = !strcmp(M.blas, "openblas");
    zero_mode = fused ? ZERO_FILL_NAN : ZERO_MULTIPLY;

    float *w[MAXB], *h[MAXB], *g[MAXB], *tmp[MAXB];
    for (int b = 0; b < M.nb; b++) {
        long n = M.count[b];
        w[b] = malloc(n * sizeof(float)); h[b] = calloc(n, sizeof(float));
        g[b] = malloc(n * sizeof(float)); tmp[b] = malloc(n * sizeof(float));
        if (!w[b] || !h[b] || !g[b] || !tmp[b]) die("out of memory", NULL);
        snprintf(p, sizeof p, "%s/init/params/%d.bin", dir, b);
        read_floats(p, w[b], n);
        if (M.start_history) { snprintf(p, sizeof p, "%s/init/history/%d.bin", dir, b); read_floats(p, h[b], n); }
    }
    int cs = M.start_cs;
    for (int k = 0; k < M.iterations; k++) {
        int iter = M.start_iter + k;
        float lr = rate(iter, &cs);
        /* ForwardBackward x iter_size: the diffs accumulate from zero */
        for (int b = 0; b < M.nb; b++) {
            memset(g[b], 0, M.count[b] * sizeof(float));
            for (int q = 0; q < M.iter_size; q++) {
                snprintf(p, sizeof p, "%s/grads/%d/%d/%d.bin", dir, k, q, b);
                read_floats(p, tmp[b], M.count[b]);
                for (long i = 0; i < M.count[b]; i++) g[b][i] = g[b][i] + tmp[b][i];
            }
        }
        /* ClipGradients: on the accumulated sum, before Normalize */
        if (M.clip >= 0) {
            float sumsq = 0.0f;
            for (int b = 0; b < M.nb; b++) sumsq += sdot_self(M.count[b], g[b]);
            float l2 = sqrtf(sumsq);
            if (l2 > M.clip) {
                float s = M.clip / l2;
                for (int b = 0; b < M.nb; b++) sscal(M.count[b], s, g[b]);
            }
        }
        for (int b = 0; b < M.nb; b++) {
            long n = M.count[b];
            if (M.iter_size != 1) sscal(n, 1.0f / (float)M.iter_size, g[b]);              /* Normalize */
            float local_decay = M.weight_decay * M.decay_mult[b];                          /* Regularize */
            if (local_decay != 0.0f) {
                if (!strcmp(M.reg, "L2")) saxpy(n, local_decay, w[b], g[b]);
                else {
                    for (long i = 0; i < n; i++) tmp[b][i] = (float)((0.0f < w[b][i]) - (w[b][i] < 0.0f));
                    saxpy(n, local_decay, tmp[b], g[b]);
                }
            }
            float local_rate = lr * M.lr_mult[b];                                          /* ComputeUpdateValue */
            sscal(n, M.momentum, h[b]);
            saxpy(n, local_rate, g[b], h[b]);
            memcpy(g[b], h[b], n * sizeof(float));
            for (long i = 0; i < n; i++) w[b][i] = w[b][i] - g[b][i];                      /* Net::Update */
        }
        const char *what[3] = {"params", "diff", "history"};
        for (int j = 0; j < 3; j++) {
            snprintf(p, sizeof p, "%s/out/%d/%s", dir, k, what[j]);
            mkdirs(p);
        }
        for (int b = 0; b < M.nb; b++) {
            float *src[3] = {w[b], g[b], h[b]};
            for (int j = 0; j < 3; j++) {
                snprintf(p, sizeof p, "%s/out/%d/%s/%d.bin", dir, k, what[j], b);
                write_floats(p, src[j], M.count[b]);
            }
        }
        snprintf(p, sizeof p, "%s/out/%d/lr.bin", dir, k);
        write_floats(p, &lr, 1);
        snprintf(p, sizeof p, "%s/out/%d/current_step.txt", dir, k);
        FILE *f = fopen(p, "w");
        if (!f) die("cannot write", p);
        fprintf(f, "%d\n", cs);
        fclose(f);
    }
    status("%s\n", "ok");
    return 0;
}
