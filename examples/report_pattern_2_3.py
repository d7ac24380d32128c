"""
The report's pattern 2.3, fixed: an MLP steers a car through `control_dofs_position`, and d loss / d MLP weight comes
out of `loss.backward()` and matches a central finite difference.

Run: python examples/report_pattern_2_3.py   (stock Genesis would print "requires_grad=False" and stop)
"""

from pathlib import Path

import genesis as gs
import torch

import genesis_grad_patch  # noqa: F401  (installs the patches)

CAR = str(Path(__file__).parents[1] / "tests" / "assets" / "planar_car.xml")
STEER = [3, 4]
HORIZON = 20


def main() -> None:
    gs.init(backend=gs.cpu, precision="64", logging_level="warning")
    scene = gs.Scene(
        sim_options=gs.options.SimOptions(dt=0.01, requires_grad=True, gravity=(0, 0, 0)), show_viewer=False
    )
    car = scene.add_entity(gs.morphs.MJCF(file=CAR))
    scene.build()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()

    def rollout() -> torch.Tensor:
        scene.reset()
        car.set_dofs_velocity(torch.tensor([1.0, 0.0, 0.0]), dofs_idx_local=[0, 1, 2])
        loss = 0.0
        for _ in range(HORIZON):
            qpos = car.get_qpos()
            e_lat, e_head = qpos[1] - 0.2, qpos[2] - 0.05
            new_steer = model(torch.stack([e_lat, e_head, car.get_dofs_velocity()[0] - 1.0]))[0]
            steer_cmd = new_steer * 0.8
            steer_cmds_torch = torch.stack([steer_cmd, steer_cmd])  # stack in torch, convert once
            car.control_dofs_position(position=gs.from_torch(steer_cmds_torch), dofs_idx_local=STEER)
            scene.step()
            qpos = scene.sim.rigid_solver.get_qpos()
            loss = loss + (qpos[1] - 0.2) ** 2 + (qpos[2] - 0.05) ** 2
        return loss

    loss = rollout()
    print(f"get_qpos().requires_grad after scene.step(): {scene.sim.rigid_solver.get_qpos().requires_grad}")
    loss.backward()
    weight = model[2].weight
    eps = 1e-6
    print("MLP output weight | autograd          | finite difference | rel. error")
    for i in range(4):
        with torch.no_grad():
            value = weight[0, i].item()
            weight[0, i] = value + eps
            plus = rollout().item()
            weight[0, i] = value - eps
            minus = rollout().item()
            weight[0, i] = value
        fd = (plus - minus) / (2 * eps)
        ad = weight.grad[0, i].item()
        print(f"w[0, {i}]           | {ad: .10e} | {fd: .10e} | {abs(ad - fd) / max(abs(fd), 1e-12):.1e}")


if __name__ == "__main__":
    main()
