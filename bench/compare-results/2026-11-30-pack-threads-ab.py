import time, numpy as np, rnncore, sys, importlib
from rnncore._kernels import rnn, gru, lstm
mods=(rnn,gru,lstm)
cells=sys.argv[1].split(','); shapes=[tuple(int(v) for v in s.split('x')) for s in sys.argv[2].split(',')]
def med(f,n):
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return ts
for cell in cells:
  for (T,N,D,H) in shapes:
    x=np.random.default_rng(0).standard_normal((N,T,D)).astype(np.float32); d=np.ones((N,T,H),np.float32)
    m=getattr(rnncore,cell)(D,H,seed=0,batch_first=True)
    def inf(): m.eval(); m(x)
    def fb(): m.train(); m(x); m.backward(d)
    n=max(5,int(0.05/(T*N*(D+H)*H*4*2e-11+2e-5)))
    r={}
    for name,f in (('inf',inf),('fb',fb)):
        res={True:[],False:[]}
        for b in range(6):
            on=b%2==0
            for mm in mods: mm._set_pack_threads(0 if on else None)
            f(); res[on]+=med(f,n)
        for mm in mods: mm._set_pack_threads(None)
        r[name]=(np.median(res[False])*1e6, np.median(res[True])*1e6)
    print(f"{cell:4s} ({T},{N},{D},{H}) inf default {r['inf'][0]:7.0f} any-size {r['inf'][1]:7.0f} x{r['inf'][0]/r['inf'][1]:.2f} | fb {r['fb'][0]:7.0f} {r['fb'][1]:7.0f} x{r['fb'][0]/r['fb'][1]:.2f}", flush=True)
