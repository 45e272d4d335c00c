// Microbenchmark (research, not built by CI): is a 2-taps-per-vpmaddwd int8 depthwise kernel worth
// writing as a schedule rule on AVX2?
//
//   gcc -O2 -mavx2 -o /tmp/dw_pair_taps benchmarks/microbench/dw_pair_taps.c && taskset -c 1 /tmp/dw_pair_taps
//
// 3x3 stride-1 depthwise u8 x i8 -> i32 on 384 channels of a 14x14 image (MobileNetV2's 14x14
// layers; rows widened to 16 as targets/lowering/wide_rows.py does), without the requantizer:
//   (a) one tap per vpmaddwd on zero-extended bytes -- the instruction mix LLVM emits for
//       schedules/depthwise_int8.py (9 vpmovzxbd + 9 vpmaddwd + 9 vpaddd per 8 outputs);
//   (b) a pair-packed plane P[h][w] = (x[h][w], x[h][w+1]) as int16 pairs, built per channel,
//       then 2 taps per vpmaddwd: 6 vpmaddwd + 6 vpaddd per 8 outputs from plain loads.
// Checks (a) == (b) bit for bit. Measured 2026-12-08 on one Zen 3 core: (a) 0.169-0.175 ms,
// (b) 0.084-0.089 ms including the pack (2.0x); TVM's kernel for the layer took 0.13-0.15 ms
// with its requantizer, ONNX Runtime's int8 0.06-0.10 ms.
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#define C 384
#define H 14
#define OW 16
#define PH (H + 2)
#define PW (OW + 2 + 2)
static uint8_t pad[C][PH][PW + 8];
static int8_t w[C][3][3];
static int32_t outa[C][H][OW], outb[C][H][OW];
static uint32_t P[PH][PW + 8];
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((noinline)) void run_a(void){
  for(int c=0;c<C;c++){
    __m256i wv[9];
    for(int t=0;t<9;t++) wv[t]=_mm256_set1_epi32(w[c][t/3][t%3]);
    for(int y=0;y<H;y++) for(int x0=0;x0<OW;x0+=8){
      __m256i acc=_mm256_setzero_si256();
      for(int ry=0;ry<3;ry++) for(int rx=0;rx<3;rx++){
        __m256i d=_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)&pad[c][y+ry][x0+rx]));
        acc=_mm256_add_epi32(acc,_mm256_madd_epi16(d,wv[ry*3+rx]));
      }
      _mm256_storeu_si256((__m256i*)&outa[c][y][x0],acc);
    }
  }
}
__attribute__((noinline)) void run_b(void){
  for(int c=0;c<C;c++){
    for(int h=0;h<PH;h++) for(int x=0;x<PW-2;x+=8){  // pack: zext bytes at x and x+1, shift-or
      __m256i lo=_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)&pad[c][h][x]));
      __m256i hi=_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)&pad[c][h][x+1]));
      _mm256_storeu_si256((__m256i*)&P[h][x],_mm256_or_si256(lo,_mm256_slli_epi32(hi,16)));
    }
    __m256i w01[3], w2[3];
    for(int ry=0;ry<3;ry++){
      w01[ry]=_mm256_set1_epi32((uint16_t)(int16_t)w[c][ry][0] | ((uint32_t)(uint16_t)(int16_t)w[c][ry][1]<<16));
      w2[ry]=_mm256_set1_epi32((uint16_t)(int16_t)w[c][ry][2]);
    }
    for(int y=0;y<H;y++) for(int x0=0;x0<OW;x0+=8){
      __m256i acc=_mm256_setzero_si256();
      for(int ry=0;ry<3;ry++){
        acc=_mm256_add_epi32(acc,_mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)&P[y+ry][x0]),w01[ry]));
        acc=_mm256_add_epi32(acc,_mm256_madd_epi16(_mm256_loadu_si256((const __m256i*)&P[y+ry][x0+2]),w2[ry]));
      }
      _mm256_storeu_si256((__m256i*)&outb[c][y][x0],acc);
    }
  }
}
int main(){
  unsigned s=1;
  for(int c=0;c<C;c++){ for(int h=0;h<PH;h++) for(int x=0;x<PW;x++){ s=s*1103515245+12345; pad[c][h][x]=(h==0||h==PH-1||x==0||x>H)?0:(s>>16)&255; }
    for(int t=0;t<9;t++){ s=s*1103515245+12345; w[c][t/3][t%3]=(int8_t)((s>>16)&255); } }
  run_a(); run_b();
  printf("equal: %d\n", memcmp(outa,outb,sizeof outa)==0);
  double ta=1e9,tb=1e9;
  for(int r=0;r<15;r++){
    double t0=now(); for(int i=0;i<20;i++) run_a(); double t1=now(); for(int i=0;i<20;i++) run_b(); double t2=now();
    if((t1-t0)/20<ta) ta=(t1-t0)/20; if((t2-t1)/20<tb) tb=(t2-t1)/20;
  }
  printf("one tap per vpmaddwd %.4f ms, tap pairs %.4f ms (incl. pack), ratio %.2f\n", ta*1e3, tb*1e3, ta/tb);
  return 0;
}
