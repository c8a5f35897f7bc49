// pedestal@1 — a bevelled logo plate with an engraved ring spins above a
// pedestal; a halo ring glows in the accent colour; key and rim lights.
// colors: 0 primary (plate), 1 secondary (pedestal), 2 accent (rim light, halo)
// scalars: 0 spin, 1 bevel

const PLATE_CENTER: vec3<f32> = vec3<f32>(0.0, 1.75, 0.0);

// Rotations of the plate and halo for this sample's time, set once per sample
// by `pose_scene` rather than on every distance evaluation.
var<private> plate_spin: mat2x2<f32>;
var<private> plate_tilt: mat2x2<f32>;
var<private> plate_bob: f32;
var<private> halo_spin: mat2x2<f32>;

fn pose_scene() {
    let t = time_s();
    plate_bob = 0.06 * sin(t * 1.7);
    plate_spin = rot2(t * param(0u) * 0.785398 + seed_offset());
    plate_tilt = rot2(0.12 * sin(t * 0.9));
    halo_spin = rot2(t * 0.4);
}

fn plate_local(p: vec3<f32>) -> vec3<f32> {
    var q = p - PLATE_CENTER - vec3<f32>(0.0, plate_bob, 0.0);
    let xz = plate_spin * q.xz;
    q = vec3<f32>(xz.x, q.y, xz.y);
    let yz = plate_tilt * q.yz;
    return vec3<f32>(q.x, yz.x, yz.y);
}

fn map(p: vec3<f32>) -> vec2<f32> {
    var res = vec2<f32>(p.y, 1.0);
    // Pedestal: a rounded drum with a thinner neck.
    let drum = sd_capped_cylinder(p - vec3<f32>(0.0, 0.3, 0.0), 1.15, 0.3) - 0.04;
    let neck = sd_capped_cylinder(p - vec3<f32>(0.0, 0.75, 0.0), 0.5, 0.2) - 0.03;
    res = op_union(res, vec2<f32>(smin(drum, neck, 0.12), 5.0));
    // Plate with an engraved ring and a raised bar: the "logo".
    let q = plate_local(p);
    let bevel = param(1u);
    var plate = sd_round_box(q, vec3<f32>(0.85, 0.85, 0.09), max(bevel, 0.005));
    let ring = sd_torus(vec3<f32>(q.x, q.z - 0.09, q.y), 0.45, 0.06);
    plate = max(plate, -ring);
    let bar = sd_round_box(q - vec3<f32>(0.0, 0.0, 0.06), vec3<f32>(0.12, 0.5, 0.06), 0.03);
    res = op_union(res, vec2<f32>(min(plate, bar), 2.0));
    // Halo: a thin ring around the plate, tilted and slowly precessing.
    var h = p - PLATE_CENTER;
    let hxz = halo_spin * h.xz;
    h = vec3<f32>(hxz.x, h.y, hxz.y);
    let hyz = rot2(0.5) * h.yz;
    h = vec3<f32>(h.x, hyz.x, hyz.y);
    res = op_union(res, vec2<f32>(sd_torus(h, 1.45, 0.018), 4.0));
    return res;
}

fn studio(rd: vec3<f32>) -> vec3<f32> {
    let base = mix(vec3<f32>(0.02, 0.022, 0.03), u.colors[2].rgb * 0.25, 0.35);
    return base * (0.6 + 0.8 * max(rd.y + 0.25, 0.0));
}

fn scene_color(px: vec2<f32>) -> vec3<f32> {
    pose_scene();
    let t = time_s();
    let eye = vec3<f32>(3.2 * sin(0.25 + 0.05 * t), 2.4, 5.4);
    let rd = camera_ray(px, eye, vec3<f32>(0.0, 1.25, 0.0), 1.7);
    let hit = march(eye, rd, 0.9);
    var col = studio(rd);
    if hit.y < 0.0 {
        return col;
    }
    let p = eye + rd * hit.x;
    let n = calc_normal(p);
    let key_dir = normalize(vec3<f32>(-0.5, 0.9, 0.6));
    let rim_dir = normalize(vec3<f32>(0.4, 0.5, -0.9));
    var albedo = vec3<f32>(0.05);
    var spec_k = 0.3;
    var gloss = 24.0;
    var emissive = vec3<f32>(0.0);
    if hit.y == 2.0 {
        albedo = u.colors[0].rgb;
        spec_k = 1.0;
        gloss = 120.0;
    } else if hit.y == 5.0 {
        albedo = u.colors[1].rgb * 0.8;
        spec_k = 0.4;
        gloss = 40.0;
    } else if hit.y == 4.0 {
        albedo = u.colors[2].rgb;
        emissive = u.colors[2].rgb * 4.0;
    } else {
        // Floor: dark, with a soft pool of light under the pedestal.
        albedo = vec3<f32>(0.04) + u.colors[1].rgb * 0.1 * exp(-0.25 * dot(p.xz, p.xz));
    }
    let sh = shadow(p + n * 0.002, key_dir, 10.0);
    let ao = occlusion(p, n);
    let diff = max(dot(n, key_dir), 0.0) * sh;
    let spec = pow(max(dot(n, normalize(key_dir - rd)), 0.0), gloss) * spec_k * sh;
    let rim = pow(clamp(1.0 + dot(n, rd), 0.0, 1.0), 2.0) * max(dot(n, rim_dir), 0.0);
    col = albedo * (2.6 * diff + 0.18 * ao) + spec * 4.0 + rim * u.colors[2].rgb * 2.2 * ao + emissive;
    return mix(col, studio(rd), 1.0 - exp(-0.004 * hit.x * hit.x));
}
