// orbit@2 — a glossy brand sphere with satellites on tilted orbits above a studio
// floor, a thin accent ring around it, and a camera circling slowly.
// colors: 0 primary (sphere), 1 secondary (backdrop, floor), 2 accent (satellites)
// scalars: 0 objects, 1 speed, 2 camera_height

const ORBIT_CENTER: vec3<f32> = vec3<f32>(0.0, 1.25, 0.0);

// Satellite centres and radii for this pixel's time, computed once per sample
// rather than on every distance evaluation.
var<private> sats: array<vec4<f32>, 12>;
var<private> sat_count: i32;

fn place_satellites() {
    sat_count = clamp(i32(param(0u)), 0, 12);
    for (var i = 0; i < sat_count; i++) {
        sats[i] = satellite(i);
    }
}

fn satellite(i: i32) -> vec4<f32> {
    let fi = f32(i);
    let h = hash11(fi * 7.13 + seed_offset());
    let radius = 1.45 + 0.85 * h;
    let tilt = (hash11(fi * 3.71 + 1.3 + seed_offset()) - 0.5) * 1.1;
    let rate = (0.55 + 0.6 * hash11(fi + 9.1)) * param(1u);
    let ang = fi * 2.39996 + h * 6.2831 + time_s() * rate;
    var p = vec3<f32>(cos(ang) * radius, 0.0, sin(ang) * radius);
    let yz = rot2(tilt) * p.yz;
    p = vec3<f32>(p.x, yz.x, yz.y);
    let size = 0.13 + 0.11 * hash11(fi * 1.91 + 4.2);
    return vec4<f32>(p + ORBIT_CENTER, size);
}

fn map(p: vec3<f32>) -> vec2<f32> {
    var res = vec2<f32>(p.y, 1.0);
    res = op_union(res, vec2<f32>(sd_sphere(p - ORBIT_CENTER, 0.78), 2.0));
    var q = p - ORBIT_CENTER;
    let tilt = rot2(0.35) * q.xy;
    q = vec3<f32>(tilt.x, tilt.y, q.z);
    res = op_union(res, vec2<f32>(sd_torus(q, 1.12, 0.025), 4.0));
    // One bounding sphere around every orbit skips the satellites for most samples.
    if length(p - ORBIT_CENTER) < 2.7 {
        for (var i = 0; i < sat_count; i++) {
            res = op_union(res, vec2<f32>(sd_sphere(p - sats[i].xyz, sats[i].w), 3.0));
        }
    } else {
        res = op_union(res, vec2<f32>(length(p - ORBIT_CENTER) - 2.55, 3.0));
    }
    return res;
}

fn backdrop(rd: vec3<f32>) -> vec3<f32> {
    let base = u.colors[1].rgb;
    let glow = pow(max(rd.y * 0.5 + 0.5, 0.0), 1.5);
    return mix(base * 0.35, base * 1.6 + vec3<f32>(0.02), glow);
}

fn shade(p: vec3<f32>, rd: vec3<f32>, mat: f32) -> vec3<f32> {
    let n = calc_normal(p);
    let key_dir = normalize(vec3<f32>(-0.55, 0.8, 0.35));
    let rim_dir = normalize(vec3<f32>(0.6, 0.35, -0.7));
    var albedo = u.colors[1].rgb * 0.9 + vec3<f32>(0.03);
    var gloss = 16.0;
    var spec_k = 0.15;
    var emissive = vec3<f32>(0.0);
    if mat == 2.0 {
        albedo = u.colors[0].rgb;
        gloss = 90.0;
        spec_k = 0.9;
    } else if mat == 3.0 {
        albedo = u.colors[2].rgb;
        gloss = 60.0;
        spec_k = 0.6;
        emissive = u.colors[2].rgb * 0.35;
    } else if mat == 4.0 {
        albedo = u.colors[2].rgb;
        emissive = u.colors[2].rgb * 2.5;
    }
    let sh = shadow(p + n * 0.002, key_dir, 8.0);
    let ao = occlusion(p, n);
    // Key light plus an unshadowed wrap term: a large softbox rather than a point
    // light, so the terminator is soft. Shadowing only the key term keeps grazing
    // shadow rays from speckling the terminator.
    let ndl = dot(n, key_dir);
    let diff = 0.8 * max(ndl, 0.0) * sh + 0.2 * clamp(ndl + 0.6, 0.0, 1.6) / 1.6;
    let half_v = normalize(key_dir - rd);
    let spec = pow(max(dot(n, half_v), 0.0), gloss) * spec_k * sh;
    let rim = pow(clamp(1.0 + dot(n, rd), 0.0, 1.0), 3.0) * max(dot(n, rim_dir), 0.0);
    let sky = backdrop(reflect(rd, n));
    let fresnel = 0.04 + 0.96 * pow(clamp(1.0 + dot(n, rd), 0.0, 1.0), 5.0);
    var col = albedo * (2.2 * diff * vec3<f32>(1.0, 0.96, 0.9) + 0.25 * ao * (0.6 + 0.4 * n.y));
    col += spec * vec3<f32>(1.0, 0.97, 0.92) * 3.0;
    col += rim * u.colors[2].rgb * 1.5 * ao;
    col = mix(col, sky, fresnel * spec_k);
    return col + emissive;
}

fn scene_color(px: vec2<f32>) -> vec3<f32> {
    place_satellites();
    let a = 0.6 + 0.12 * time_s() + seed_offset() * 0.05;
    let eye = vec3<f32>(sin(a) * 5.6, param(2u) + 0.3 * sin(time_s() * 0.3), cos(a) * 5.6);
    let rd = camera_ray(px, eye, ORBIT_CENTER - vec3<f32>(0.0, 0.15, 0.0), 1.6);
    let hit = march(eye, rd, 1.0);
    var col = backdrop(rd);
    if hit.y >= 0.0 {
        let p = eye + rd * hit.x;
        col = shade(p, rd, hit.y);
        // Floor fades into the backdrop with distance.
        let fog = 1.0 - exp(-0.012 * hit.x * hit.x);
        col = mix(col, backdrop(rd), fog);
    }
    // Vignette keeps the eye on the sphere.
    let size = vec2<f32>(u.frame_size);
    let q = px / size - 0.5;
    return col * (1.0 - 0.55 * dot(q, q));
}
