"""The maths of flow matching, free of training and sampling machinery.

Convention (the opposite of some libraries): t = 0 is DATA, t = 1 is NOISE.

    x_t = (1 - t) x0 + t x1,   x0 ~ data,  x1 ~ N(0, I);   target velocity x1 - x0;
    sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0.

    path.py       the straight path, its target velocity, training-time draws, x̂0 from v
    meanflow.py   MeanFlow's average velocity over [r, t]: interval draws and the jvp target
    coupling.py   minibatch optimal-transport pairing of data and noise
    gaussian.py   the exact flow of Gaussian data (closed-form v, flow map, average velocity, for tests)

May import: torch, scipy, ``fmcli.errors`` and ``fmcli.models.forward_ad``. Nothing here knows about
checkpoints, solvers, data sets or the command line.
"""
