// dunes@1 — a low flyover of wind-carved dunes towards a low sun, with ripples,
// haze and a graded sky.
// colors: 0 sky (zenith), 1 ground (sand), 2 sun (sun and haze)
// scalars: 0 speed, 1 roughness

const SUN_DIR: vec3<f32> = vec3<f32>(0.26, 0.22, 0.94);

fn dune_height(xz: vec2<f32>) -> f32 {
    let s = seed_offset();
    let w = xz + vec2<f32>(s, s * 0.37);
    let warp = vec2<f32>(fbm(w * 0.05, 2), fbm(w * 0.05 + 7.3, 2)) * 6.0;
    let q = w + warp;
    // Ridged dunes: |sin| folded and sharpened by `roughness`.
    let ridge = 1.0 - abs(sin(q.x * 0.22 + 0.6 * sin(q.y * 0.08)));
    let sharp = mix(ridge * ridge, pow(ridge, 4.0), param(1u));
    return 1.6 * sharp + 2.2 * fbm(q * 0.03, 3) - 1.2;
}

fn map(p: vec3<f32>) -> vec2<f32> {
    // A heightfield is not a true distance; scaling keeps the march from overshooting.
    return vec2<f32>((p.y - dune_height(p.xz)) * 0.55, 1.0);
}

fn sky(rd: vec3<f32>) -> vec3<f32> {
    let horizon = mix(u.colors[2].rgb, vec3<f32>(1.0), 0.25);
    let t = pow(clamp(rd.y, 0.0, 1.0), 0.45);
    var col = mix(horizon * 1.3, u.colors[0].rgb, t);
    let sun = max(dot(rd, SUN_DIR), 0.0);
    col += u.colors[2].rgb * (pow(sun, 900.0) * 40.0 + pow(sun, 24.0) * 0.8);
    return col;
}

fn scene_color(px: vec2<f32>) -> vec3<f32> {
    let z = time_s() * 2.4 * param(0u);
    let x = 1.5 * sin(z * 0.05);
    let ground = dune_height(vec2<f32>(x, z));
    let eye = vec3<f32>(x, max(ground, 0.4) + 1.5, z);
    let look_at = eye + vec3<f32>(0.2 * cos(z * 0.05), -0.22, 1.0);
    let rd = camera_ray(px, eye, look_at, 1.5);
    var col = sky(rd);
    if rd.y > 0.35 {
        return col;
    }
    let hit = march(eye, rd, 1.0);
    if hit.y < 0.0 {
        return col;
    }
    let p = eye + rd * hit.x;
    var n = calc_normal(p);
    // Wind ripples perturb the normal, strongest on gentle slopes.
    let ripple = sin(dot(p.xz, vec2<f32>(0.35, 2.6)) + 1.7 * value_noise(p.xz * 0.9)) * 0.5;
    n = normalize(n + vec3<f32>(ripple * 0.25 * n.y, 0.0, ripple * 0.1));
    // Marching shadow rays over the heightfield costs as much as the primary ray;
    // general jobs shade the lee sides by the sun angle alone.
    var sh = 1.0;
    if is_advanced() {
        sh = soft_shadow(p + n * 0.08, SUN_DIR, 25.0, 8.0);
    }
    let ao = occlusion(p, n);
    let diff = max(dot(n, SUN_DIR), 0.0) * sh;
    let sand = u.colors[1].rgb * (0.85 + 0.3 * value_noise(p.xz * 0.7));
    var c = sand * (3.2 * diff * u.colors[2].rgb + 0.35 * ao * u.colors[0].rgb * (0.5 + 0.5 * n.y));
    let glint = pow(max(dot(reflect(rd, n), SUN_DIR), 0.0), 40.0) * sh;
    c += glint * u.colors[2].rgb * 0.6;
    let haze = 1.0 - exp(-0.0009 * hit.x * hit.x);
    return mix(c, sky(vec3<f32>(rd.x, 0.02, rd.z)), haze);
}
