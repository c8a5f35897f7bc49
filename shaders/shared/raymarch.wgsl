// Sphere tracing against the template's `map(p) -> (distance, material)`, with
// normals, shadows and ambient occlusion. `advanced` jobs get soft shadows and
// ambient occlusion; `general` jobs get hard shadows and none.

const MAX_DIST: f32 = 50.0;
const SURF_EPS: f32 = 0.0008;

fn is_advanced() -> bool {
    return u.variant == VARIANT_ADVANCED;
}

fn time_s() -> f32 {
    return u.time_s;
}

// Scalar parameter i in declaration order.
fn param(i: u32) -> f32 {
    return u.scalars[i / 4u][i % 4u];
}

fn seed_offset() -> f32 {
    return f32(u.seed % 9973u) * 0.7319;
}

// Camera ray through pixel position `px` (frame pixels, y down).
fn camera_ray(px: vec2<f32>, eye: vec3<f32>, look_at: vec3<f32>, zoom: f32) -> vec3<f32> {
    let size = vec2<f32>(u.frame_size);
    let uv = vec2<f32>(px.x - 0.5 * size.x, 0.5 * size.y - px.y) / size.y;
    let fw = normalize(look_at - eye);
    let rt = normalize(cross(fw, vec3<f32>(0.0, 1.0, 0.0)));
    let up = cross(rt, fw);
    return normalize(uv.x * rt + uv.y * up + zoom * fw);
}

// Returns (t, material); material < 0 when nothing was hit.
fn march(ro: vec3<f32>, rd: vec3<f32>, step_scale: f32) -> vec2<f32> {
    let steps = select(90, 160, is_advanced());
    var t = 0.01;
    for (var i = 0; i < steps; i++) {
        let h = map(ro + rd * t);
        if h.x < SURF_EPS * t {
            return vec2<f32>(t, h.y);
        }
        t += h.x * step_scale;
        if t > MAX_DIST {
            break;
        }
    }
    return vec2<f32>(t, -1.0);
}

fn calc_normal(p: vec3<f32>) -> vec3<f32> {
    let e = vec2<f32>(1.0, -1.0) * 0.0007;
    return normalize(
        e.xyy * map(p + e.xyy).x + e.yyx * map(p + e.yyx).x + e.yxy * map(p + e.yxy).x + e.xxx * map(p + e.xxx).x
    );
}

fn soft_shadow(ro: vec3<f32>, rd: vec3<f32>, tmax: f32, k: f32) -> f32 {
    var res = 1.0;
    var t = 0.02;
    for (var i = 0; i < 48; i++) {
        let h = map(ro + rd * t).x;
        res = min(res, k * h / t);
        t += clamp(h, 0.02, 0.25);
        if res < 0.001 || t > tmax {
            break;
        }
    }
    return clamp(res, 0.0, 1.0);
}

fn hard_shadow(ro: vec3<f32>, rd: vec3<f32>, tmax: f32) -> f32 {
    var t = 0.02;
    for (var i = 0; i < 40; i++) {
        let h = map(ro + rd * t).x;
        if h < 0.001 {
            return 0.0;
        }
        t += h;
        if t > tmax {
            break;
        }
    }
    return 1.0;
}

fn shadow(ro: vec3<f32>, rd: vec3<f32>, tmax: f32) -> f32 {
    if is_advanced() {
        return soft_shadow(ro, rd, tmax, 10.0);
    }
    return hard_shadow(ro, rd, tmax);
}

fn occlusion(p: vec3<f32>, n: vec3<f32>) -> f32 {
    if !is_advanced() {
        return 1.0;
    }
    var occ = 0.0;
    var scale = 1.0;
    for (var i = 0; i < 5; i++) {
        let h = 0.01 + 0.12 * f32(i) / 4.0;
        let d = map(p + n * h).x;
        occ += (h - d) * scale;
        scale *= 0.95;
    }
    return clamp(1.0 - 3.0 * occ, 0.0, 1.0);
}
