import time, numpy as np, rnncore, torch, sys
torch.set_num_threads(2)
def med(f, n):
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return ts
cells=sys.argv[1].split(','); Ts=[int(t) for t in sys.argv[2].split(',')]
shapes=[(16,64,128),(64,256,256)]
for cell in cells:
  for N,D,H in shapes:
    for T in Ts:
        x=np.random.default_rng(0).standard_normal((N,T,D)).astype(np.float32); d=np.ones((N,T,H),np.float32)
        m=getattr(rnncore,cell)(D,H,seed=0,batch_first=True)
        tm=getattr(torch.nn,cell)(D,H,batch_first=True); xt=torch.from_numpy(x); xg=torch.from_numpy(x).requires_grad_(True); dt=torch.from_numpy(d)
        def rinf(): m.eval(); m(x)
        def rfb(): m.train(); m(x); m.backward(d)
        def tinf():
            with torch.inference_mode(): tm(xt)
        def tfb():
            y,_=tm(xg); y.backward(dt)
        n=max(10, int(0.02/(T*N*D*H*1e-11+1e-5)))
        res={k:[] for k in ('ri','ti','rf','tf')}
        for b in range(4):
            for k,f in (('ri',rinf),('ti',tinf),('rf',rfb),('tf',tfb)) if b%2==0 else (('tf',tfb),('rf',rfb),('ti',tinf),('ri',rinf)):
                f(); res[k]+=med(f,n)
        r={k:np.median(v)*1e6 for k,v in res.items()}
        print(f"{cell:4s} T={T:2d} N={N:2d} D={D:3d} H={H:3d}  inf rc {r['ri']:7.0f} torch {r['ti']:7.0f} ratio {r['ti']/r['ri']:5.2f} | fb rc {r['rf']:7.0f} torch {r['tf']:7.0f} ratio {r['tf']/r['rf']:5.2f}", flush=True)
